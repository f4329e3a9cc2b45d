"""A tracepoint's format file (``tracefs/events/SYSTEM/EVENT/format``), parsed: its id,
its fields, and the symbolic tables of its print format (``__print_symbolic``), which
name the values of a field: the exit reasons of ``kvm_exit`` and ``kvm_userspace_exit``.

The names come from the kernel's own file, never from a list here, so a new kernel's
reasons appear by themselves.  ``kvm_exit`` has two tables, chosen by the ISA field
(``(REC->isa == 1) ? __print_symbolic(VMX's) : __print_symbolic(SVM's)``): each table
keeps the condition that chooses it, so both are known on any host (even under PVM,
where ``kvm_exit`` never fires).  The first step of exit reasons as a provider
(issue 21): counting them is the next.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmstats.errors import VmstatsError

#: Where tracefs is mounted on current systems (debugfs's ``tracing`` on older ones).
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d+);")  # fmt: skip
_SYMBOLIC = "__print_symbolic("
_ENTRY = re.compile(r'\{\s*(?P<value>[^,{}]+?)\s*,\s*(?P<name>(?:"(?:[^"\\]|\\.)*"\s*)+)\}')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_CONDITION = re.compile(r"\(\s*(REC->\w+\s*==\s*-?\w+)\s*\)\s*\?\s*$")


class TraceFormatError(VmstatsError):
    """A format file that is not what tracefs writes."""


@dataclass(frozen=True)
class Field:
    """One field of an event's record."""

    name: str
    type: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class SymbolicTable:
    """The names ``__print_symbolic`` gives a field's values.  ``of`` is the expression
    named (``REC->exit_reason & 0xffff``); ``when`` the condition that chooses this
    table (``REC->isa == 1``), ``not REC->isa == 1`` for the other branch, or ""."""

    of: str
    names: dict[int, str]
    when: str = ""

    @property
    def field(self) -> str:
        """The field it names (``exit_reason``)."""
        match = re.search(r"REC->(\w+)", self.of)
        return match.group(1) if match else ""


@dataclass(frozen=True)
class EventFormat:
    """One tracepoint's format."""

    system: str
    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str
    tables: list[SymbolicTable] = field(default_factory=list)

    def table(self, field_name: str, when: str = "") -> SymbolicTable | None:
        """The symbolic table of ``field_name`` (chosen by ``when``), or None."""
        for table in self.tables:
            if table.field == field_name and (not when or table.when == when):
                return table
        return None


def tracefs() -> Path | None:
    """The mounted tracefs with events, or None."""
    for root in TRACEFS:
        try:
            if (root / "events").is_dir():
                return root
        except PermissionError:
            return root  # mounted, but not for this user: reading it says so
    return None


def read_format(system: str, event: str, root: Path | None = None) -> EventFormat:
    """The format of ``system/event``; :class:`TraceFormatError` if it cannot be read."""
    return read_formats(system, [event], root)[0]


def read_formats(system: str, events: Sequence[str], root: Path | None = None) -> list[EventFormat]:
    """The formats of ``system``'s ``events``.  Where tracefs is not mounted, root reads
    them from a tracefs mounted in a child's own mount namespace, gone with it: the host's
    mounts are left as they are.  :class:`TraceFormatError` if they cannot be read, or
    the kernel has no such event."""
    base = root or tracefs()
    if "*" in events:  # every event of the system
        (listed,) = _texts(base, [f"events/{system}/"])
        if not isinstance(listed, list):
            raise TraceFormatError(f"this kernel has no tracepoints {system}:*")
        events = list(dict.fromkeys(e for name in events
                                    for e in (listed if name == "*" else [name])))  # fmt: skip
    texts = _texts(base, [f"events/{system}/{event}/format" for event in events])
    for event, text in zip(events, texts, strict=True):
        if not isinstance(text, str):
            raise TraceFormatError(f"this kernel has no tracepoint {system}:{event}")
    return [parse_format(system, text) for text in texts if isinstance(text, str)]


#: A file's text, a directory's events (a path that ends with "/"), or None: not there.
_Found = str | list[str] | None


def _texts(base: Path | None, relative: Sequence[str]) -> list[_Found]:
    return _read_privately(relative) if base is None else [_read(base, r) for r in relative]


def _read(base: Path, relative: str) -> _Found:
    """A format file's text, or a directory's events; None if there is no such thing."""
    path = base / relative
    try:
        if relative.endswith("/"):
            return sorted(p.parent.name for p in path.glob("*/format"))
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None


#: What the child runs: mount tracefs on a directory of its own in a mount namespace of
#: its own, print the files (a directory's events for a path ending in "/"; null for
#: what the kernel does not have).
_PRIVATE_READ = """
import ctypes, json, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000):  # CLONE_NEWNS
    sys.exit("cannot make a mount namespace: " + os.strerror(ctypes.get_errno()))
if libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None):  # MS_REC | MS_PRIVATE
    sys.exit("cannot make the mounts private: " + os.strerror(ctypes.get_errno()))
where = tempfile.mkdtemp(prefix="vmstats-tracefs-")
try:
    if libc.mount(b"nodev", where.encode(), b"tracefs", 0, None):
        sys.exit("cannot mount tracefs: " + os.strerror(ctypes.get_errno()))
    texts = []
    for name in sys.argv[1:]:
        path = os.path.join(where, name)
        try:
            if name.endswith("/"):
                texts.append(sorted(e for e in os.listdir(path)
                                    if os.path.exists(os.path.join(path, e, "format"))))
            else:
                texts.append(open(path).read())
        except FileNotFoundError:
            texts.append(None)
        except OSError as exc:
            sys.exit(f"cannot read {name}: {exc.strerror}")
    libc.umount2(where.encode(), 2)  # MNT_DETACH
finally:
    os.rmdir(where)
print(json.dumps(texts))
"""


def _read_privately(relative: Sequence[str]) -> list[_Found]:
    not_mounted = "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    if os.geteuid() != 0:
        raise TraceFormatError(not_mounted)
    try:
        done = subprocess.run([sys.executable, "-c", _PRIVATE_READ, *relative],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TraceFormatError(f"{not_mounted}, and mounting it privately failed: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise TraceFormatError(f"{not_mounted}, and mounting it privately failed: {reason}")
    texts: list[_Found] = json.loads(done.stdout)
    return texts


def parse_format(system: str, text: str) -> EventFormat:
    """A format file's text, parsed."""
    name = _line_value(text, "name")
    try:
        ident = int(_line_value(text, "ID"))
    except ValueError:
        raise TraceFormatError(f"{system}/{name}: its ID is not a number") from None
    fields = {}
    for match in _FIELD.finditer(text):
        decl = match["decl"].strip()
        words = re.sub(r"\[.*\]", "", decl).split()
        fields[words[-1]] = Field(words[-1], " ".join(words[:-1]), int(match["offset"]),
                                  int(match["size"]), match["signed"] == "1")  # fmt: skip
    print_fmt = text.split("print fmt:", 1)[1].strip() if "print fmt:" in text else ""
    return EventFormat(system, name, ident, fields, print_fmt, symbolic_tables(print_fmt))


def _line_value(text: str, key: str) -> str:
    match = re.search(rf"^{key}:\s*(.+)$", text, re.MULTILINE)
    if match is None:
        raise TraceFormatError(f"no {key} line: not a tracepoint format")
    return match.group(1).strip()


def symbolic_tables(print_fmt: str) -> list[SymbolicTable]:
    """Every ``__print_symbolic(EXPR, {VALUE, "NAME"}, ...)`` of a print format, in order,
    with the condition of the ``?:`` branch it sits in.  A table whose values are not
    numbers (macro names the format keeps unexpanded) is left out."""
    tables: list[SymbolicTable] = []
    start = 0
    while (found := print_fmt.find(_SYMBOLIC, start)) >= 0:
        body_start = found + len(_SYMBOLIC)
        end = _closing(print_fmt, body_start)
        body = print_fmt[body_start:end]
        of = body.split(",", 1)[0].strip()
        start = end + 1
        try:
            names = {_value(m["value"]): "".join(_STRING.findall(m["name"]))
                     for m in _ENTRY.finditer(body)}  # fmt: skip
        except TraceFormatError:
            continue  # values the format keeps as macro names: none can be told apart
        tables.append(SymbolicTable(of, names, _condition(print_fmt[:found], tables)))
    return tables


def _closing(text: str, start: int) -> int:
    """Where the parenthesis opened just before ``start`` closes (strings skipped)."""
    depth, index, quoted = 1, start, False
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise TraceFormatError("an unclosed __print_symbolic( in the print format")


def _condition(before: str, tables: list[SymbolicTable]) -> str:
    """The ``?:`` condition choosing a table: ``(COND) ?`` just before it, or the
    negation of the previous table's when it follows that table's ``:``."""
    match = _CONDITION.search(before)
    if match is not None:
        return re.sub(r"\s+", " ", match.group(1))
    if tables and tables[-1].when and before.rstrip().endswith(":"):
        return f"not {tables[-1].when}"
    return ""


_OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}  # fmt: skip


def _value(text: str) -> int:
    """A table entry's value: an integer expression of literals (``0x040 + 13``, ``-1``,
    ``(1 << 0) | (1 << 1)``)."""

    def evaluate(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = evaluate(node.left), evaluate(node.right)
            if not isinstance(node.op, ast.LShift | ast.RShift) or 0 <= right < 256:
                return _OPERATORS[type(node.op)](left, right)
        raise TraceFormatError(f"a symbolic value that is not a number: {text!r}")

    cleaned = re.sub(r"(?<=[0-9a-fA-F])[uUlL]+\b", "", text.strip())
    try:
        return evaluate(ast.parse(cleaned, mode="eval").body)
    except SyntaxError:
        raise TraceFormatError(f"a symbolic value that is not a number: {text!r}") from None
