"""Counting tracepoints' events per thread and by the value of one of their fields, in
the kernel, with one tiny eBPF program per event and one array of counts in shared
memory for every thread counted.

Why not kvm_stat's way (one perf counter per reason, each filtered ``reason == N``): the
kernel evaluates every such filter at every event of the thread, so 31 reasons cost an
exit 31 filter runs (docs/benchmarks.md), and a vCPU holds an fd per reason.  Here each
event runs one program of about twenty instructions, whatever the number of reasons and
of vCPUs counted: it looks up the calling thread in the map of threads counted (thread
id -> its region of the array), reads the field from the record, and adds one to the
slot of its value in the thread's region of a ``BPF_F_MMAPABLE`` array, which the reader
maps and reads like memory (no syscall per read).

A program attached to a tracepoint runs at every hit, on every CPU and in every task
(the kernel keeps one program list per tracepoint, whichever perf event attached it): so
there is one program per event for the whole process (:class:`Tracer`), attached once,
and a thread counted costs no fd (:class:`ThreadCounts`): an entry in the map, a region.
A thread that is not counted costs an event one failed lookup.

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from vmstats.ebpf import (
    ADD64_K,
    ADD64_X,
    ATOMIC_ADD_DW,
    BPF_MAP_CREATE,
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_FD_BY_ID,
    BPF_MAP_GET_NEXT_KEY,
    BPF_MAP_UPDATE_BATCH,
    BPF_MAP_UPDATE_ELEM,
    BPF_PROG_TYPE_TRACEPOINT,
    CALL,
    EXIT,
    FP,
    FUNC_GET_CURRENT_PID_TGID,
    FUNC_MAP_LOOKUP_ELEM,
    JA,
    JEQ_K,
    JGT_K,
    LD_IMM64,
    LDX_MEM,
    LSH64_K,
    MOV64_K,
    MOV64_X,
    MUL64_K,
    R0,
    R1,
    R2,
    R6,
    R7,
    STX_MEM,
    ProgramRefused,
    bpf,
    hint,
    insn,
    load,
)
from vmstats.trace.counters import CounterError, open_counter

BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY = 1, 2
BPF_F_MMAPABLE = 1 << 10
BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE = 1, 2
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
#: union bpf_attr, as far as each command needs it (the kernel zero-fills the rest).
_MAP_ATTR = struct.Struct("=IIIIIII16s")  # type, key/value size, entries, flags, inner...
_ELEM_ATTR = struct.Struct("=IIQQQ")  # map fd, pad, key, value, flags
_BATCH_ATTR = struct.Struct("=QQQQIIQQ")  # in/out batch, keys, values, count, map fd, flags
#: Threads counted at once by one process: each has a region of the one array of counts,
#: and an entry in the map of threads (both made at start), within MAX_BYTES of counts
#: (a region is 8 bytes a reason: 256 for kvm_userspace_exit, 18 KB for every kvm event,
#: whose APIC tables name register offsets up to 0x400).
MAX_THREADS, MAX_BYTES = 4096, 16 << 20
SLOT = 8  # bytes of one count (u64)


@dataclass(frozen=True)
class Counted:
    """What one event's program counts: ``slots`` counts from ``base`` (a slot index in
    a thread's region); the value of the field at ``offset`` (``size`` bytes) picks the
    slot, and a value past the last slot counts in the slot after it (the others).  With
    ``size`` 0 every event counts in slot ``base``."""

    event_id: int
    base: int
    offset: int = 0
    size: int = 0
    slots: int = 1


def program(counted: Counted, threads_fd: int, counts_fd: int, stride: int,
            capacity: int) -> bytes:  # fmt: skip
    """``counts[region(tid)][base + min(field, slots)] += 1`` for a counted thread (its
    region: ``stride`` slots); return 0, so the perf event itself records nothing."""
    exit_ = [insn(MOV64_K, R0, imm=0), insn(EXIT)]
    if counted.size == 0:
        pick = [insn(MOV64_K, R2, imm=0)]
    else:
        pick = [
            insn(LDX_MEM[counted.size], R2, R6, counted.offset),
            insn(JGT_K, R2, off=2, imm=counted.slots - 1),  # past the table: the others
            insn(LSH64_K, R2, imm=3),
            insn(JA, off=1),
            insn(MOV64_K, R2, imm=counted.slots * SLOT),
        ]
    add = [
        insn(ADD64_K, R2, imm=counted.base * SLOT),
        insn(ADD64_X, R2, R7),  # the thread's region
        insn(LD_IMM64, R0, BPF_PSEUDO_MAP_VALUE, 0, counts_fd),
        insn(0, imm=0),  # the second half: offset 0 in the one value
        insn(ADD64_X, R0, R2),
        insn(MOV64_K, R1, imm=1),
        insn(ATOMIC_ADD_DW, R0, R1, 0, 0),
        *exit_,
    ]
    body = pick + add
    region = [  # r7 = the region's offset in bytes, bounded for the verifier
        insn(LDX_MEM[4], R7, R0, 0),
        insn(JGT_K, R7, off=len(body) - len(exit_) + 1, imm=capacity - 1),
        insn(MUL64_K, R7, imm=stride * SLOT),
    ]
    lookup_thread = [  # r0 = the calling thread's region number, or out
        insn(MOV64_X, R6, R1),
        insn(CALL, imm=FUNC_GET_CURRENT_PID_TGID),
        insn(STX_MEM[4], FP, R0, -4),  # the low half: the thread id
        insn(MOV64_X, R2, FP),
        insn(ADD64_K, R2, imm=-4),
        insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, threads_fd),
        insn(0),
        insn(CALL, imm=FUNC_MAP_LOOKUP_ELEM),
        insn(JEQ_K, R0, off=len(region) + len(body) - len(exit_), imm=0),
    ]
    # every miss jumps to the exit that closes ``add``
    return b"".join(lookup_thread + region + body)


def _load(code: bytes) -> int:
    """The program's fd; :class:`CounterError` with the verifier's words if refused."""
    try:
        return load(BPF_PROG_TYPE_TRACEPOINT, code, b"vmstats_count")
    except ProgramRefused as exc:
        detail = f" ({exc.words})" if exc.words else ""
        raise CounterError(f"the kernel refuses the counting program: {exc.strerror}"
                           f"{detail}{hint(exc.errno)}") from None  # fmt: skip


def _map(kind: int, key: int, value: int, entries: int, flags: int, name: bytes) -> int:
    attr = _MAP_ATTR.pack(kind, key, value, entries, flags, 0, 0, name)
    try:
        return bpf(BPF_MAP_CREATE, attr)
    except OSError as exc:
        raise CounterError(f"cannot make the counting map {name.decode()}: {exc.strerror}"
                           f"{hint(exc.errno)}") from None  # fmt: skip


def map_keys(fd: int) -> list[int]:
    """The u32 keys of a hash map, sorted."""
    found: list[int] = []
    key, following = ctypes.c_uint32(0), ctypes.c_uint32(0)
    first = True
    while True:
        attr = _ELEM_ATTR.pack(fd, 0, 0 if first else ctypes.addressof(key),
                               ctypes.addressof(following), 0)  # fmt: skip
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except OSError:  # ENOENT: the last one
            return sorted(found)
        found.append(following.value)
        key.value, first = following.value, False


def map_by_id(map_id: int) -> int:
    """An fd of the BPF map of that id (root only): what another process holds."""
    return bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("=IIII", map_id, 0, 0, 0))


class Tracer:
    """The counting of one process, for up to ``capacity`` threads at once: one array of
    counts in shared memory (a region of ``slots`` counts per thread), the map of the
    threads counted (thread id -> region), and one program per event, attached once (to
    a perf event on CPU 0: it runs everywhere).  Entering a thread in a plain hash map
    costs a syscall; a map of maps would cost a wait for RCU on every change (the kernel
    makes sure no program still uses the old inner map), 10 ms each here."""

    def __init__(self, counted: Sequence[Counted], slots: int,
                 capacity: int | None = None) -> None:  # fmt: skip
        if capacity is None:
            capacity = max(1, min(MAX_THREADS, MAX_BYTES // (slots * SLOT)))
        self.slots, self.capacity = slots, capacity
        self._fds: list[int] = []
        self.threads = self.counts = -1
        self._free = list(range(capacity - 1, -1, -1))  # regions, lowest last (popped first)
        self.regions: dict[int, int] = {}  # thread id -> region
        try:
            self.counts = _map(BPF_MAP_TYPE_ARRAY, 4, capacity * slots * SLOT, 1,
                               BPF_F_MMAPABLE, b"vmstats_counts")  # fmt: skip
            self.threads = _map(BPF_MAP_TYPE_HASH, 4, 4, capacity, 0, b"vmstats_threads")
            try:
                self._memory = mmap.mmap(self.counts, capacity * slots * SLOT, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            except OSError as exc:
                raise CounterError(f"cannot map the counts: {exc.strerror}") from None
            for one in counted:
                self._attach(one)
        except BaseException:
            self.close()
            raise

    def _attach(self, counted: Counted) -> None:
        code = program(counted, self.threads, self.counts, self.slots, self.capacity)
        prog = _load(code)
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

    def add(self, tids: Sequence[int], pid: int, known: Collection[int] = ()
            ) -> tuple[dict[int, ThreadCounts], dict[int, CounterError]]:  # fmt: skip
        """Count threads ``tids`` of process ``pid`` from now on, each from 0 in a region
        of its own; those that cannot be counted, and why.  A thread of another process
        is refused: what a VMM (or its QEMU's reply) names as its vCPU threads must not
        make another VM's exits its own.  Its threads are listed, unless ``known`` (its
        threads as the caller just listed them) holds every one of ``tids``.  All enter
        the map in one call (a VM's vCPUs together: a first scan of 2,048 vCPUs made
        2,048 calls)."""
        if not tids:
            return {}, {}
        threads = set(known)
        if not threads.issuperset(tids):
            try:
                threads = {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
            except (OSError, ValueError):
                threads = set()
        taken: dict[int, int] = {}  # thread id -> region
        refused: dict[int, CounterError] = {}
        for tid in tids:
            if tid not in threads:  # the map takes any number
                refused[tid] = CounterError(f"no thread {tid} in process {pid}")
            elif tid in self.regions or tid in taken:  # one count per thread: each closes its own
                refused[tid] = CounterError(f"thread {tid} is counted already")
            elif not self._free:
                mib = MAX_BYTES >> 20
                refused[tid] = CounterError(f"{self.capacity} threads are counted already (as "
                                            f"many as {mib} MiB of {self.slots} counts each "
                                            "hold)")  # fmt: skip
            else:
                region = taken[tid] = self._free.pop()
                start = region * self.slots * SLOT  # from 0 (a thread counted there before)
                self._memory[start : start + self.slots * SLOT] = bytes(self.slots * SLOT)
        for tid, exc in self._enter(taken).items():
            self._free.append(taken.pop(tid))
            refused[tid] = CounterError(f"cannot count thread {tid}: {exc.strerror}")
        self.regions.update(taken)
        return {tid: ThreadCounts(self, tid, region) for tid, region in taken.items()}, refused

    def _enter(self, regions: dict[int, int]) -> dict[int, OSError]:
        """Put ``regions`` (thread id -> region) in the map of threads: in one batch, else
        (a kernel before 5.6, or a batch that failed part way) one by one; those that
        failed."""
        if not regions:
            return {}
        keys = (ctypes.c_uint32 * len(regions))(*regions.keys())
        values = (ctypes.c_uint32 * len(regions))(*regions.values())
        batch = _BATCH_ATTR.pack(0, 0, ctypes.addressof(keys), ctypes.addressof(values),
                                 len(regions), self.threads, 0, 0)  # fmt: skip
        with contextlib.suppress(OSError):
            bpf(BPF_MAP_UPDATE_BATCH, batch)
            return {}
        failed: dict[int, OSError] = {}
        for index, tid in enumerate(regions):
            try:
                bpf(BPF_MAP_UPDATE_ELEM, _ELEM_ATTR.pack(
                    self.threads, 0, ctypes.addressof(keys) + 4 * index,
                    ctypes.addressof(values) + 4 * index, 0))  # fmt: skip
            except OSError as exc:
                failed[tid] = exc
        return failed

    @property
    def full(self) -> bool:
        """Is every region taken?"""
        return not self._free

    def remove(self, tid: int) -> None:
        """Count thread ``tid`` no more (its region is free again)."""
        region = self.regions.pop(tid, None)
        if region is None or self.threads < 0:
            return
        key = ctypes.c_uint32(tid)
        with contextlib.suppress(OSError):
            bpf(BPF_MAP_DELETE_ELEM, _ELEM_ATTR.pack(self.threads, 0, ctypes.addressof(key),
                                                      0, 0))  # fmt: skip
        self._free.append(region)

    def read(self, region: int) -> bytes:
        """A region's counts so far, as the kernel keeps them (a copy: it keeps adding):
        bytes compare fast, and most vCPUs of a host stand still between two reads."""
        start = region * self.slots * SLOT
        return self._memory[start : start + self.slots * SLOT]

    def counted(self) -> list[int]:
        """The thread ids in the map now (what the programs count)."""
        return map_keys(self.threads)

    def close(self) -> None:
        """Stop counting: the programs detached, the maps let go."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if hasattr(self, "_memory"):
            self._memory.close()
            del self._memory
        for fd in (self.threads, self.counts):
            if fd >= 0:
                os.close(fd)
        self.threads = self.counts = -1
        self.regions = {}


class ThreadCounts:
    """One thread's counts, from when :meth:`Tracer.add` made it until :meth:`close`: its
    region of the tracer's array."""

    def __init__(self, tracer: Tracer, tid: int, region: int) -> None:
        self.tracer = tracer
        self.tid = tid
        self.region = region
        self._open = True

    def read(self) -> bytes:
        """Every slot's count so far, as u64s in this machine's order."""
        return self.tracer.read(self.region) if self._open else b""

    def close(self) -> None:
        """Counted no more."""
        if self._open:
            self.tracer.remove(self.tid)
            self._open = False
