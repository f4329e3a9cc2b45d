"""The human monitor (HMP): ``info stats``, ``info version``, ``help``, ``cpu``.

Text is byte-identical to QEMU 7.2's for the same data: the command-line parsing
(``get_command_name``, ``get_str``, ``get_expr`` and their messages, the "Try help" line),
the help tables and the ``info stats`` layout (reference §3).  Like QEMU's
``human-monitor-command``, each command line runs in a fresh monitor: ``cpu N`` is
validated but lasts only for that line, and ``cpu-index`` picks the CPU instead.
Differences from QEMU, on purpose: no vCPU is synchronised (kicked) to find "the current
CPU", and where QEMU would dereference a NULL schema entry we print its error line.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmstats.qapi.errors import GenericError, QapiError
from vmstats.stats.model import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
    StatsType,
)
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.units import hmp_unit

_SPACE = " \t\n\v\f\r"


class _ParseFailure(Exception):
    """Parsing an argument failed; the message (if any) was already printed."""


class _ExprError(Exception):
    pass


@dataclass(frozen=True)
class HMPCommand:
    name: str
    args_type: str
    params: str
    help: str
    handler: Callable[[HumanMonitor, dict[str, object]], None] | None = None
    sub_table: Sequence[HMPCommand] = field(default_factory=tuple)

    def matches(self, name: str) -> bool:
        return name in self.name.split("|")


def _get_str(text: str, pos: int) -> tuple[str | None, int]:
    """QEMU's ``get_str``: a word or a double-quoted string.  (None, pos) on failure."""
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    if pos >= len(text):
        return None, pos
    out = []
    if text[pos] == '"':
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\":
                pos += 1
                c = text[pos] if pos < len(text) else ""
                pos += 1
                mapped = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}.get(c)
                if mapped is None:
                    return None, pos
                out.append(mapped)
            else:
                out.append(text[pos])
                pos += 1
        if pos >= len(text):
            return None, pos  # unterminated string
        pos += 1
    else:
        while pos < len(text) and text[pos] not in _SPACE:
            out.append(text[pos])
            pos += 1
    return "".join(out)[:1023], pos


class _Expr:
    """QEMU's monitor expression evaluator (``get_expr``), without CPU registers."""

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def _ch(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_space(self) -> None:
        while self._ch() and self._ch() in _SPACE:
            self.pos += 1

    def _next(self) -> None:
        if self._ch():
            self.pos += 1
            self._skip_space()

    def unary(self) -> int:
        ch = self._ch()
        if ch == "+":
            self._next()
            return self.unary()
        if ch == "-":
            self._next()
            return -self.unary()
        if ch == "~":
            self._next()
            return ~self.unary()
        if ch == "(":
            self._next()
            value = self.sum()
            if self._ch() != ")":
                raise _ExprError("')' expected")
            self._next()
            return value
        if ch == "'":
            self.pos += 1
            if not self._ch():
                raise _ExprError("character constant expected")
            value = ord(self._ch())
            self.pos += 1
            if self._ch() != "'":
                raise _ExprError("missing terminating ' character")
            self._next()
            return value
        if ch == "$":
            raise _ExprError("unknown register")
        if not ch:
            raise _ExprError("unexpected end of expression")
        return self._number()

    def _number(self) -> int:
        rest = self.text[self.pos :]
        digits = "0123456789"
        base = 10
        start = 0
        if rest[:2].lower() == "0x" and len(rest) > 2 and rest[2] in "0123456789abcdefABCDEF":
            base, start, digits = 16, 2, "0123456789abcdefABCDEF"
        elif rest[:1] == "0":
            base, digits = 8, "01234567"
        end = start
        while end < len(rest) and rest[end] in digits:
            end += 1
        if end == 0:
            raise _ExprError(f"invalid char '{rest[0]}' in expression")
        value = int(rest[start:end] or "0", base)
        if value >= 1 << 64:
            raise _ExprError("number too large")
        self.pos += end
        self._skip_space()
        return value

    def _binary(self, operand: Callable[[], int], ops: str) -> int:
        value = operand()
        while self._ch() and self._ch() in ops:
            op = self._ch()
            self._next()
            other = operand()
            if op in "/%" and other == 0:
                raise _ExprError("division by zero")
            value = _OPERATORS[op](value, other)
        return value

    def prod(self) -> int:
        return self._binary(self.unary, "*/%")

    def logic(self) -> int:
        return self._binary(self.prod, "&|^")

    def sum(self) -> int:
        return self._binary(self.logic, "+-")


def _c_div(a: int, b: int) -> int:
    """C division: truncates toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


_OPERATORS: dict[str, Callable[[int, int], int]] = {
    "*": operator.mul,
    "/": _c_div,
    "%": lambda a, b: a - b * _c_div(a, b),
    "&": operator.and_,
    "|": operator.or_,
    "^": operator.xor,
    "+": operator.add,
    "-": operator.sub,
}


def _to_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


class HumanMonitor:
    """One HMP command line at a time, over a stats registry."""

    def __init__(
        self,
        registry: StatsRegistry,
        cpus: Callable[[], Sequence[str]],
        version: tuple[int, int, int],
        package: str,
        providers: Sequence[StatsProvider] = (StatsProvider.KVM,),
    ) -> None:
        self.registry = registry
        self.cpus = cpus
        self.version = version
        self.package = package
        self.providers = list(providers)  # the StatsProvider values this QEMU knows
        self._out: list[str] = []
        self._cpu: int | None = None
        info = (
            HMPCommand(
                "stats",
                "target:s,names:s?,provider:s?",
                "target [names] [provider]",
                "show statistics for the given target (vm or vcpu); optionally filter "
                "byname (comma-separated list, or * for all) and provider",
                HumanMonitor._info_stats,
            ),
            HMPCommand("version", "", "", "show the version of QEMU", HumanMonitor._info_version),
        )
        self.table: tuple[HMPCommand, ...] = (
            HMPCommand("cpu", "index:i", "index", "set the default CPU", HumanMonitor._cpu_cmd),
            HMPCommand("help|?", "name:S?", "[cmd]", "show the help", HumanMonitor._help),
            HMPCommand(
                "info",
                "item:s?",
                "[subcommand]",
                "show various information about the system state",
                HumanMonitor._info_help,
                info,
            ),
        )

    # -- entry point ----------------------------------------------------------------

    def execute(self, command_line: str, cpu_index: int | None = None) -> str:
        """Run one command line; return its output with QEMU's CRLF line ends."""
        self._out = []
        self._cpu = None
        if cpu_index is not None:
            if not 0 <= cpu_index < len(self.cpus()):
                raise GenericError("Parameter 'cpu-index' expects a CPU number")
            self._cpu = cpu_index
        self._handle(command_line)
        return "".join(self._out).replace("\n", "\r\n")

    def printf(self, text: str) -> None:
        self._out.append(text)

    # -- QEMU's handle_hmp_command ---------------------------------------------------

    def _find(
        self, line: str, pos: int, table: Sequence[HMPCommand]
    ) -> tuple[HMPCommand | None, int]:
        while pos < len(line) and line[pos] in _SPACE:
            pos += 1
        if pos >= len(line):
            return None, pos
        name_start = pos
        while pos < len(line) and line[pos] != "/" and line[pos] not in _SPACE:
            pos += 1
        name = line[name_start:pos][:255]
        command = next((c for c in table if c.matches(name)), None)
        if command is None:
            self.printf(f"unknown command: '{line[:pos]}'\n")
            return None, pos
        while pos < len(line) and line[pos] in _SPACE:
            pos += 1
        if command.sub_table and pos < len(line):
            return self._find(line, pos, command.sub_table)
        return command, pos

    def _handle(self, line: str) -> None:
        command, pos = self._find(line, 0, self.table)
        if command is None:
            return
        try:
            args, _ = self._parse_arguments(command, line, pos)
        except _ParseFailure:
            end = pos
            while end > 0 and line[end - 1] in _SPACE:
                end -= 1
            self.printf(f'Try "help {line[:end]}" for more information\n')
            return
        assert command.handler is not None
        command.handler(self, args)

    def _parse_arguments(
        self, command: HMPCommand, line: str, pos: int
    ) -> tuple[dict[str, object], int]:
        args: dict[str, object] = {}
        for spec in filter(None, command.args_type.split(",")):
            key, kind = spec.split(":")
            optional = kind.endswith("?")
            kind = kind.rstrip("?")
            while pos < len(line) and line[pos] in _SPACE:
                pos += 1
            if optional and pos >= len(line):
                continue
            if kind == "s":
                value, pos = _get_str(line, pos)
                if value is None:
                    self.printf(f"{command.name}: string expected\n")
                    raise _ParseFailure
                args[key] = value
            elif kind == "S":
                args[key] = line[pos:]
                pos = len(line)
            elif kind == "i":
                expr = _Expr(line, pos)
                try:
                    expr._skip_space()
                    value_int = _to_int64(expr.sum())
                except _ExprError as exc:
                    self.printf(f"{exc}\n")
                    raise _ParseFailure from None
                pos = expr.pos
                if (value_int >> 32) & 0xFFFFFFFF:
                    self.printf(f"'{command.name}' has failed: integer is for 32-bit values\n")
                    raise _ParseFailure
                args[key] = value_int
        while pos < len(line) and line[pos] in _SPACE:
            pos += 1
        if pos < len(line):
            self.printf(f"{command.name}: extraneous characters at the end of line\n")
            raise _ParseFailure
        return args, pos

    # -- help -----------------------------------------------------------------------

    def _help_dump(self, table: Sequence[HMPCommand], args: list[str], index: int) -> None:
        if index >= len(args):
            for command in table:
                prefix = "".join(f"{a} " for a in args[:index])
                self.printf(f"{prefix}{command.name} {command.params} -- {command.help}\n")
            return
        for command in table:
            if command.matches(args[index]):
                if command.sub_table:
                    self._help_dump(command.sub_table, args, index + 1)
                else:
                    prefix = "".join(f"{a} " for a in args[:index])
                    self.printf(f"{prefix}{command.name} {command.params} -- {command.help}\n")
                return
        self.printf("unknown command: '" + " ".join(args[: index + 1]) + "'\n")

    def _help(self, args: dict[str, object]) -> None:
        words: list[str] = []
        text = args.get("name")
        if isinstance(text, str):
            pos = 0
            while True:
                while pos < len(text) and text[pos] in _SPACE:
                    pos += 1
                if pos >= len(text):
                    break
                word, pos = _get_str(text, pos)
                if word is None or len(words) >= 16:
                    return
                words.append(word)
        self._help_dump(self.table, words, 0)

    def _info_help(self, args: dict[str, object]) -> None:
        self._help_dump(self.table, ["info"], 0)

    # -- commands -------------------------------------------------------------------

    def _cpu_cmd(self, args: dict[str, object]) -> None:
        index = args["index"]
        assert isinstance(index, int)
        if not 0 <= index < len(self.cpus()):
            self.printf("invalid CPU index\n")
            return
        self._cpu = index

    def _info_version(self, args: dict[str, object]) -> None:
        major, minor, micro = self.version
        self.printf(f"{major}.{minor}.{micro}{self.package}\n")

    def _info_stats(self, args: dict[str, object]) -> None:
        target_text = str(args["target"])
        provider_text = args.get("provider")
        names = args.get("names")
        try:
            target = StatsTarget(target_text)
            if target == StatsTarget.CRYPTODEV and StatsProvider.CRYPTODEV not in self.providers:
                raise ValueError(target_text)
        except ValueError:
            self.printf(f"invalid stats target {target_text}\n")
            return
        provider: StatsProvider | None = None
        if provider_text is not None:
            try:
                provider = StatsProvider(str(provider_text))
                if provider not in self.providers:
                    raise ValueError(provider_text)
            except ValueError:
                self.printf(f"invalid stats provider {provider_text}\n")
                return
        try:
            schemas = self.registry.query_stats_schemas(provider)
            vcpus: list[str] | None = None
            if target == StatsTarget.VCPU:
                cpus = self.cpus()
                if not cpus:
                    return
                vcpus = [cpus[self._cpu or 0]]
            results = self.registry.query_stats(
                self._filter(target, names if isinstance(names, str) else None, provider, vcpus)
            )
        except QapiError as err:
            self.printf(f"{err.desc}\n")
            return
        for result in results:
            self._print_result(target, provider is None, result, schemas)

    def _filter(
        self,
        target: StatsTarget,
        names: str | None,
        provider: StatsProvider | None,
        vcpus: list[str] | None,
    ) -> StatsFilter:
        if names is None and provider is None:
            return StatsFilter(target, None, vcpus)
        wanted = None if names is None or names == "*" else names.split(",")
        requests = [StatsRequest(p, wanted) for p in self.providers if provider in (None, p)]
        return StatsFilter(target, requests[::-1], vcpus)  # QEMU prepends each request

    def _print_result(
        self,
        target: StatsTarget,
        show_provider: bool,
        result: StatsResult,
        schemas: Sequence[StatsSchema],
    ) -> None:
        schema = next(
            (s for s in schemas if s.provider == result.provider and s.target == target), None
        )
        if schema is None:
            self.printf(f"failed to find schema list for {result.provider.value}\n")
            return
        if show_provider:
            self.printf(f"provider: {result.provider.value}\n")
        entries = list(schema.stats)
        index = 0
        for name, value in result.stats:
            while index < len(entries) and entries[index].name != name:
                index += 1
            if index >= len(entries):
                self.printf(f"failed to find schema entry for {name}\n")
                return
            entry = entries[index]
            index += 1
            unit = hmp_unit(entry)
            line = f"    {name} ({entry.type.value}{', ' if unit else ''}{unit}"
            if entry.type == StatsType.LINEAR_HISTOGRAM and entry.bucket_size is not None:
                line += f", bucket size={_to_int32(entry.bucket_size)}"
            line += ")"
            if isinstance(value, bool):
                line += f": {'yes' if value else 'no'}\n"
            elif isinstance(value, int):
                line += f": {_to_int64(value)}\n"
            else:
                line += ": " + "".join(f"[{i}]={_to_int64(v)} " for i, v in enumerate(value, 1))
                line += "\n"
            self.printf(line)


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
