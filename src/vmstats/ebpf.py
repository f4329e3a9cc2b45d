"""The ``bpf`` system call and eBPF instructions, for the few small programs vmstats
writes itself (no compiler, no libbpf): the exit-reason counters (:mod:`vmstats.trace.bpf`)
and the iterators that list every process's KVM fds in one pass
(:mod:`vmstats.kvm.iterate`).  Loading a program needs ``CAP_BPF`` and, for tracing
ones, ``CAP_PERFMON``; root has both.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

SYS_BPF = 321  # x86-64
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 0, 2, 3, 4
BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_MAP_GET_FD_BY_ID, BPF_MAP_UPDATE_BATCH = 5, 10, 14, 26
BPF_LINK_CREATE, BPF_ITER_CREATE = 28, 33
BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_TRACING, BPF_PROG_TYPE_SYSCALL = 5, 26, 31
BPF_TRACE_ITER = 28  # enum bpf_attach_type
BPF_F_SLEEPABLE = 1 << 4
#: union bpf_attr for BPF_PROG_LOAD, up to attach_btf_id (the kernel zero-fills the rest):
#: type, count, insns, license, log level/size/buffer, kern_version, flags, name,
#: ifindex, expected attach type, BTF fd, func/line info (unused), attach_btf_id.
_PROG_ATTR = struct.Struct("=IIQQIIQII16sIIIIQIIQII")
_INSN = struct.Struct("<BBhi")  # code, dst_reg | src_reg << 4, off, imm
INSN_SIZE = _INSN.size
#: union bpf_attr for BPF_PROG_TEST_RUN: prog fd, retval, data in/out, repeat...
_TEST_RUN = struct.Struct("=IIIIQQIIIIQQIII")
_LOG_SIZE = 1 << 16
_libc = ctypes.CDLL(None, use_errno=True)

# Instruction codes (linux/bpf.h, linux/bpf_common.h).
LDX_MEM = {1: 0x71, 2: 0x69, 4: 0x61, 8: 0x79}  # BPF_LDX | BPF_MEM | size
STX_MEM = {4: 0x63, 8: 0x7B}  # BPF_STX | BPF_MEM | size
ST_MEM_DW = 0x7A  # BPF_ST | BPF_MEM | BPF_DW
JGT_K, JEQ_K, JNE_K, JNE_X, JSLT_K, JA, CALL, EXIT = 0x25, 0x15, 0x55, 0x5D, 0xC5, 0x05, 0x85, 0x95
MOV64_K, MOV64_X, ADD64_K, ADD64_X, AND64_X, LSH64_K, RSH64_K, MUL64_K = (
    0xB7, 0xBF, 0x07, 0x0F, 0x5F, 0x67, 0x77, 0x27)  # fmt: skip
LD_IMM64 = 0x18
ATOMIC_ADD_DW = 0xDB  # BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
# Helpers (enum bpf_func_id).
FUNC_MAP_LOOKUP_ELEM, FUNC_GET_CURRENT_PID_TGID = 1, 14
FUNC_SEQ_WRITE, FUNC_D_PATH, FUNC_BTF_FIND_BY_NAME_KIND = 127, 147, 167


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One instruction."""
    return _INSN.pack(code, dst | src << 4, off, imm)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def load_imm64(dst: int, value: int) -> list[bytes]:
    """``dst = value`` (64 bits): the two halves of ``BPF_LD_IMM64``."""
    return [insn(LD_IMM64, dst, imm=_signed32(value)), insn(0, imm=_signed32(value >> 32))]


@dataclass(frozen=True)
class Jump:
    """A conditional jump to a label of :func:`assemble` (``code`` with ``dst``, and
    ``src`` or ``imm``)."""

    code: int
    label: str
    dst: int = 0
    src: int = 0
    imm: int = 0


def assemble(parts: Sequence[bytes | Jump | str]) -> bytes:
    """Instructions, jumps to labels and labels (a ``str`` marks the place of the next
    instruction) as one program: each jump's offset counted for it."""
    places: dict[str, int] = {}
    at = 0
    for part in parts:
        if isinstance(part, str):
            places[part] = at
        else:
            at += 1
    out: list[bytes] = []
    for part in parts:
        if isinstance(part, Jump):
            out.append(insn(part.code, part.dst, part.src, places[part.label] - len(out) - 1,
                            part.imm))  # fmt: skip
        elif isinstance(part, bytes):
            out.append(part)
    return b"".join(out)


def bpf(command: int, attr: bytes) -> int:
    """The ``bpf`` system call with ``attr`` (its result; :class:`OSError` on failure).
    The kernel may write back into the attributes: :func:`bpf_into` returns them."""
    return bpf_into(command, attr)[0]


def bpf_into(command: int, attr: bytes) -> tuple[int, bytes]:
    """:func:`bpf`, and the attributes as the kernel left them."""
    buffer = ctypes.create_string_buffer(attr, len(attr))
    result = int(_libc.syscall(SYS_BPF, command, buffer, len(attr)))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result, buffer.raw


def hint(code: int | None) -> str:
    """What a refusal of the kernel most likely means for vmstats."""
    if code in (errno.EPERM, errno.EACCES):
        return " (needs root, or CAP_BPF and CAP_PERFMON)"
    return ""


class ProgramRefused(OSError):
    """The kernel refused a program; ``words``: the verifier's last line, if any."""

    def __init__(self, code: int, words: str) -> None:
        super().__init__(code, os.strerror(code))
        self.words = words


#: How many times a load is tried: the verifier gives up with EAGAIN when a signal comes
#: for the loading thread (a SIGHUP to the daemon, a profiler's sampling), and the same
#: load passes once tried again (as libbpf does, five times).
LOAD_ATTEMPTS = 5


def load(prog_type: int, code: bytes, name: bytes, *, attach_type: int = 0,
         attach_btf_id: int = 0, flags: int = 0) -> int:  # fmt: skip
    """Load a GPL program: its fd; :class:`ProgramRefused` with the verifier's words."""
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = _PROG_ATTR.pack(prog_type, len(code) // INSN_SIZE, ctypes.addressof(insns),
                           ctypes.addressof(license), 1, _LOG_SIZE, ctypes.addressof(log),
                           0, flags, name, 0, attach_type, 0, 0, 0, 0, 0, 0, 0,
                           attach_btf_id)  # fmt: skip
    attempts = 1
    while True:
        try:
            return bpf(BPF_PROG_LOAD, attr)
        except OSError as exc:
            if exc.errno == errno.EAGAIN and attempts < LOAD_ATTEMPTS:
                attempts += 1  # a signal came while the verifier ran: it gave up, not refused
                continue
            lines = [line for line in log.value.decode(errors="replace").strip().splitlines()
                     if not line.startswith(("processed ", "verification time"))]  # fmt: skip
            raise ProgramRefused(exc.errno or 0, lines[-1] if lines else "") from None


def run_syscall(code: bytes, name: bytes) -> int:
    """Load a program of type syscall, run it once in this process (``BPF_PROG_TEST_RUN``)
    and let it go: what it returned (32 bits, signed).  :class:`OSError` if the kernel
    refuses it (Linux < 5.14 has no such programs; without ``CAP_BPF``)."""
    prog = load(BPF_PROG_TYPE_SYSCALL, code, name, flags=BPF_F_SLEEPABLE)
    try:
        _, attr = bpf_into(BPF_PROG_TEST_RUN, _TEST_RUN.pack(prog, *[0] * 14))
    finally:
        os.close(prog)
    returned: int = struct.unpack_from("=i", attr, 4)[0]
    return returned
