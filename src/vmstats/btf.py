"""The few facts of this kernel's BTF (the description of its types,
``/sys/kernel/btf/vmlinux``) that vmstats' iterators are written with: where a member
lies in a struct (the layout of ``struct file`` or ``struct task_struct`` changes with
the kernel's version and configuration), and the type id of the function an iterator
attaches to.

Why not read the whole of it, as libbpf does: 125,000 types here, and walking them in
Python takes about 55 ms, a third of a first scan's budget at 256 VMs.  A struct is
found by its name, first in the string section, then in the type section (two
``bytes.find``, done in C), and its members read at once; the id of a function is asked
of the kernel, which keeps an index (a syscall program calling
``bpf_btf_find_by_name_kind``, Linux >= 5.14).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmstats.ebpf import (
    ADD64_K,
    CALL,
    EXIT,
    FP,
    FUNC_BTF_FIND_BY_NAME_KIND,
    MOV64_K,
    MOV64_X,
    R1,
    R2,
    R3,
    R4,
    STX_MEM,
    insn,
    load_imm64,
    run_syscall,
)

VMLINUX = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, header length, 4 offsets
_TYPE = struct.Struct("<III")  # name offset, info (vlen, kind, kind_flag), size or type
_MEMBER = struct.Struct("<III")  # name offset, type, offset (bits; bitfield size on top)
KIND_STRUCT, KIND_FUNC = 4, 12


class BtfError(Exception):
    """This kernel's BTF does not say what was asked (or cannot be read)."""


@dataclass(frozen=True)
class StructLayout:
    """A struct's members as BTF gives them: byte offsets of the named ones, and of the
    anonymous ones (unions and structs whose own members the struct holds in place)."""

    size: int
    named: dict[str, int]
    anonymous: list[int]


class Btf:
    """The kernel's BTF, read once (5 MB here), to look up structs by name."""

    def __init__(self, path: str | None = None) -> None:
        path = path or VMLINUX
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror} (a kernel without "
                           "CONFIG_DEBUG_INFO_BTF)") from None  # fmt: skip
        if len(data) < _HEADER.size:
            raise BtfError(f"{path} is not BTF")
        magic, _, _, length, types, types_size, strings, strings_size = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError(f"{path} is not BTF of this machine's byte order")
        self._types = data[length + types : length + types + types_size]
        self._strings = data[length + strings : length + strings + strings_size]

    def _name_offset(self, name: str) -> int:
        found = self._strings.find(b"\0" + name.encode() + b"\0")
        if found < 0:
            raise BtfError(f"no type named {name} in this kernel's BTF")
        return found + 1

    def _name(self, offset: int) -> str:
        return self._strings[offset : self._strings.index(b"\0", offset)].decode()

    def struct(self, name: str) -> StructLayout:
        """The layout of ``struct name``."""
        key = struct.pack("<I", self._name_offset(name))
        at = self._types.find(key)
        while at >= 0:  # records are 4-aligned; the name's number may be any word too
            if at % 4 == 0 and at + _TYPE.size <= len(self._types):
                _, info, size = _TYPE.unpack_from(self._types, at)
                if (info >> 24) & 0x1F == KIND_STRUCT:
                    return self._layout(at, info, size)
            at = self._types.find(key, at + 1)
        raise BtfError(f"no struct {name} in this kernel's BTF")

    def _layout(self, at: int, info: int, size: int) -> StructLayout:
        vlen, bitfields = info & 0xFFFF, info >> 31
        named: dict[str, int] = {}
        anonymous: list[int] = []
        members = at + _TYPE.size
        for index in range(vlen):
            name, _, offset = _MEMBER.unpack_from(self._types, members + index * _MEMBER.size)
            bits = offset & 0xFFFFFF if bitfields else offset
            if name == 0:
                anonymous.append(bits // 8)
            else:
                named[self._name(name)] = bits // 8
        return StructLayout(size, named, anonymous)


def func_id(name: str) -> int:
    """The BTF type id of the kernel function ``name``, asked of the kernel itself: a
    program of type syscall calls ``bpf_btf_find_by_name_kind`` and returns it."""
    raw = name.encode() + b"\0"
    raw += bytes(-len(raw) % 8)
    code: list[bytes] = []
    for start in range(0, len(raw), 8):  # the name on the program's stack
        code += load_imm64(R1, int.from_bytes(raw[start : start + 8], "little"))
        code.append(insn(STX_MEM[8], FP, R1, start - len(raw)))
    code += [
        insn(MOV64_X, R1, FP),
        insn(ADD64_K, R1, imm=-len(raw)),
        insn(MOV64_K, R2, imm=len(name) + 1),  # with its NUL
        insn(MOV64_K, R3, imm=KIND_FUNC),
        insn(MOV64_K, R4, imm=0),
        insn(CALL, imm=FUNC_BTF_FIND_BY_NAME_KIND),
        insn(EXIT),
    ]
    try:
        found = run_syscall(b"".join(code), b"vmstats_btf_id")  # the id, or -errno
    except OSError as exc:
        raise BtfError(f"cannot ask the kernel for BTF ids: {exc.strerror}") from None
    if found <= 0:
        raise BtfError(f"no function {name} in this kernel's BTF")
    return found
