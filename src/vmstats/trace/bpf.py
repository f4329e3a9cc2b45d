"""Counting tracepoints' events per thread and by the value of one of their fields, in
the kernel, with one tiny eBPF program per event and one shared-memory array per thread.

Why not kvm_stat's way (one perf counter per reason, each filtered ``reason == N``): the
kernel evaluates every such filter at every event of the thread, so 31 reasons cost an
exit 31 filter runs (+11 % exits measured, docs/benchmarks.md), and a vCPU holds an fd
per reason.  Here each event runs one program of two dozen instructions, whatever the
number of reasons and of vCPUs counted: it looks up the calling thread in a map of the
threads counted (a hash of maps: thread id -> that thread's array), reads the field from
the record, and adds one to the slot of its value in the thread's ``BPF_F_MMAPABLE``
array, which the reader maps and reads like memory (no syscall per read).

A program attached to a tracepoint runs at every hit, on every CPU and in every task
(the kernel keeps one program list per tracepoint, whichever perf event attached it): so
there is one program per event for the whole process (:class:`Tracer`), attached once,
and a thread counted costs one fd (:class:`ThreadCounts`), its array.  A thread that is
not counted costs an event one failed lookup.

The programs are written here as instructions (no compiler, no libbpf); the verifier
checks the record read and the bounded array access.  Loading them needs ``CAP_BPF`` and
``CAP_PERFMON`` (root has both).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmstats.trace.counters import CounterError, open_counter

SYS_BPF = 321  # x86-64
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 0, 2, 3, 4
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH_OF_MAPS = 2, 13
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_F_NO_PREALLOC, BPF_F_MMAPABLE = 1 << 0, 1 << 10
BPF_PSEUDO_MAP_FD = 1
BPF_FUNC_MAP_LOOKUP_ELEM, BPF_FUNC_GET_CURRENT_PID_TGID = 1, 14
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
#: union bpf_attr, as far as each command needs it (the kernel zero-fills the rest).
_MAP_ATTR = struct.Struct("=IIIIIII16s")  # type, key/value size, entries, flags, inner...
_ELEM_ATTR = struct.Struct("=IIQQQ")  # map fd, pad, key, value, flags
_PROG_ATTR = struct.Struct("=IIQQIIQII16s")  # type, count, insns, license, log..., name
_INSN = struct.Struct("<BBhi")  # code, dst_reg | src_reg << 4, off, imm
_LOG_SIZE = 1 << 16
#: Threads counted at once by one process (a hash entry each, allocated as used).
MAX_THREADS = 1 << 16
_libc = ctypes.CDLL(None, use_errno=True)

# Instruction codes (linux/bpf.h, linux/bpf_common.h).
_LDX_MEM = {1: 0x71, 2: 0x69, 4: 0x61, 8: 0x79}  # BPF_LDX | BPF_MEM | size
_STX_MEM_W, _ST_MEM_W = 0x63, 0x62
_JGT_K, _JEQ_K, _JA, _CALL, _EXIT = 0x25, 0x15, 0x05, 0x85, 0x95
_MOV64_K, _MOV64_X, _ADD64_K, _ADD64_X, _LSH64_K = 0xB7, 0xBF, 0x07, 0x0F, 0x67
_LD_IMM64 = 0x18
_ATOMIC_ADD_DW = 0xDB  # BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD
_R0, _R1, _R2, _R6, _FP = 0, 1, 2, 6, 10
SLOT = 8  # bytes of one count (u64)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, dst | src << 4, off, imm)


def _bpf(command: int, attr: bytes) -> int:
    buffer = ctypes.create_string_buffer(attr, len(attr))
    result = int(_libc.syscall(SYS_BPF, command, buffer, len(attr)))
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result


def _hint(code: int | None) -> str:
    return " (needs root, or CAP_BPF and CAP_PERFMON)" if code in (1, 13) else ""


def _array(slots: int) -> int:
    """A thread's array: one value of ``slots`` u64s, mappable."""
    attr = _MAP_ATTR.pack(BPF_MAP_TYPE_ARRAY, 4, slots * SLOT, 1, BPF_F_MMAPABLE, 0, 0,
                          b"vmstats_counts")  # fmt: skip
    try:
        return _bpf(BPF_MAP_CREATE, attr)
    except OSError as exc:
        raise CounterError(f"cannot make a counting array: {exc.strerror}"
                           f"{_hint(exc.errno)}") from None  # fmt: skip


@dataclass(frozen=True)
class Counted:
    """What one event's program counts: ``slots`` counts from ``base`` (a slot index in
    a thread's array); the value of the field at ``offset`` (``size`` bytes) picks the
    slot, and a value past the last slot counts in the slot after it (the others).  With
    ``size`` 0 every event counts in slot ``base``."""

    event_id: int
    base: int
    offset: int = 0
    size: int = 0
    slots: int = 1


def program(counted: Counted, threads_fd: int) -> bytes:
    """``threads[tid][base + min(field, slots)] += 1`` for a counted thread; return 0, so
    the perf event itself records nothing."""
    exit_ = [_insn(_MOV64_K, _R0, imm=0), _insn(_EXIT)]
    if counted.size == 0:
        pick = [_insn(_MOV64_K, _R2, imm=0)]
    else:
        pick = [
            _insn(_LDX_MEM[counted.size], _R2, _R6, counted.offset),
            _insn(_JGT_K, _R2, off=2, imm=counted.slots - 1),  # past the table: the others
            _insn(_LSH64_K, _R2, imm=3),
            _insn(_JA, off=1),
            _insn(_MOV64_K, _R2, imm=counted.slots * SLOT),
        ]
    add = [
        _insn(_ADD64_K, _R2, imm=counted.base * SLOT),
        _insn(_ADD64_X, _R0, _R2),
        _insn(_MOV64_K, _R1, imm=1),
        _insn(_ATOMIC_ADD_DW, _R0, _R1, 0, 0),
        *exit_,
    ]
    body = pick + add
    lookup_array = [  # r0 = the thread's array's value, or out
        _insn(_MOV64_X, _R1, _R0),
        _insn(_ST_MEM_W, _FP, off=-8, imm=0),
        _insn(_MOV64_X, _R2, _FP),
        _insn(_ADD64_K, _R2, imm=-8),
        _insn(_CALL, imm=BPF_FUNC_MAP_LOOKUP_ELEM),
        _insn(_JEQ_K, _R0, off=len(body) - len(exit_), imm=0),
    ]
    lookup_thread = [  # r0 = the calling thread's array (a map), or out
        _insn(_MOV64_X, _R6, _R1),
        _insn(_CALL, imm=BPF_FUNC_GET_CURRENT_PID_TGID),
        _insn(_STX_MEM_W, _FP, _R0, -4),  # the low half: the thread id
        _insn(_MOV64_X, _R2, _FP),
        _insn(_ADD64_K, _R2, imm=-4),
        _insn(_LD_IMM64, _R1, BPF_PSEUDO_MAP_FD, 0, threads_fd),
        _insn(0),
        _insn(_CALL, imm=BPF_FUNC_MAP_LOOKUP_ELEM),
        _insn(_JEQ_K, _R0, off=len(lookup_array) + len(body) - len(exit_), imm=0),
    ]
    # both misses jump to the exit that closes ``add``
    return b"".join(lookup_thread + lookup_array + body)


def _load(counted: Counted, threads_fd: int) -> int:
    """The program's fd; :class:`CounterError` with the verifier's words if refused."""
    code = program(counted, threads_fd)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = _PROG_ATTR.pack(BPF_PROG_TYPE_TRACEPOINT, len(code) // _INSN.size,
                           ctypes.addressof(insns), ctypes.addressof(license), 1, _LOG_SIZE,
                           ctypes.addressof(log), 0, 0, b"vmstats_count")  # fmt: skip
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        words = [line for line in log.value.decode(errors="replace").strip().splitlines()
                 if not line.startswith(("processed ", "verification time"))]  # fmt: skip
        detail = f" ({words[-1]})" if words else ""
        raise CounterError(f"the kernel refuses the counting program: {exc.strerror}"
                           f"{detail}{_hint(exc.errno)}") from None  # fmt: skip


class Tracer:
    """The counting of one process: the map of the threads counted, and one program per
    event, attached once (to a perf event on CPU 0: it runs everywhere).  Threads are
    added and removed with :class:`ThreadCounts`."""

    def __init__(self, counted: Sequence[Counted], slots: int) -> None:
        self.slots = slots
        self._fds: list[int] = []
        template = _array(slots)  # what every thread's array is like
        try:
            attr = _MAP_ATTR.pack(BPF_MAP_TYPE_HASH_OF_MAPS, 4, 4, MAX_THREADS,
                                  BPF_F_NO_PREALLOC, template, 0, b"vmstats_threads")  # fmt: skip
            try:
                self.threads = _bpf(BPF_MAP_CREATE, attr)
            except OSError as exc:
                raise CounterError(f"cannot make the map of counted threads: {exc.strerror}"
                                   f"{_hint(exc.errno)}") from None  # fmt: skip
        finally:
            os.close(template)
        try:
            for one in counted:
                self._attach(one)
        except BaseException:
            self.close()
            raise

    def _attach(self, counted: Counted) -> None:
        prog = _load(counted, self.threads)
        try:
            event = open_counter(counted.event_id, -1, cpu=0)
            try:
                fcntl.ioctl(event, PERF_EVENT_IOC_SET_BPF, prog)
            except OSError as exc:
                os.close(event)
                raise CounterError(f"cannot attach the counting program to tracepoint "
                                   f"{counted.event_id}: {exc.strerror}") from None  # fmt: skip
        finally:
            os.close(prog)
        self._fds.append(event)

    def _update(self, command: int, tid: int, array: int = 0) -> None:
        key = ctypes.c_uint32(tid)
        value = ctypes.c_uint32(array)
        _bpf(command, _ELEM_ATTR.pack(self.threads, 0, ctypes.addressof(key),
                                      ctypes.addressof(value) if array else 0, 0))  # fmt: skip

    def counted(self) -> list[int]:
        """The thread ids in the map now (what the programs count)."""
        found: list[int] = []
        key, following = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            attr = _ELEM_ATTR.pack(self.threads, 0, 0 if first else ctypes.addressof(key),
                                   ctypes.addressof(following), 0)  # fmt: skip
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError:  # ENOENT: the last one
                return sorted(found)
            found.append(following.value)
            key.value, first = following.value, False

    def close(self) -> None:
        """Stop counting: the programs detached, the map let go."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self.threads >= 0:
            os.close(self.threads)
            self.threads = -1


class ThreadCounts:
    """One thread's counts, from when it is made until :meth:`close`: its array of
    ``slots`` u64s in shared memory, entered in the tracer's map under its thread id.
    It holds one fd: the mapping's."""

    def __init__(self, tracer: Tracer, tid: int) -> None:
        self.tracer = tracer
        self.tid = tid
        if tid <= 0 or not os.path.exists(f"/proc/{tid}"):
            raise CounterError(f"no thread {tid}")  # the map would take any number
        array = _array(tracer.slots)
        try:  # the mapping keeps a duplicate of the fd: the only one kept
            self._memory = mmap.mmap(array, tracer.slots * SLOT, mmap.MAP_SHARED,
                                     mmap.PROT_READ)  # fmt: skip
            tracer._update(BPF_MAP_UPDATE_ELEM, tid, array)
        except OSError as exc:
            if hasattr(self, "_memory"):
                self._memory.close()
            raise CounterError(f"cannot count thread {tid}: {exc.strerror}") from None
        finally:
            os.close(array)
        self._view: memoryview | None = memoryview(self._memory).cast("Q")

    def read(self) -> list[int]:
        """Every slot's count so far (a copy: the kernel keeps adding)."""
        return self._view.tolist() if self._view is not None else []

    def close(self) -> None:
        """Counted no more: out of the tracer's map, its array let go."""
        if self._view is None:
            return
        with contextlib.suppress(OSError):  # the tracer closed first: the map is gone
            if self.tracer.threads >= 0:
                self.tracer._update(BPF_MAP_DELETE_ELEM, self.tid)
        self._view.release()
        self._view = None
        self._memory.close()
