"""Counting a tracepoint in the kernel, per thread and per value of a field: one
``perf_event_open(PERF_TYPE_TRACEPOINT)`` counter per (thread, reason), filtered in the
kernel (``PERF_EVENT_IOC_SET_FILTER``, ``reason == 2``), read with one ``read`` each.  No
event reaches userspace: the kernel adds one to a counter.  Opening needs root (or
``CAP_PERFMON``); :class:`CounterError` says why it cannot be done.

The second step of exit reasons (issue 21): a provider on top of these is the next.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vmstats.errors import VmstatsError
from vmstats.trace.format import EventFormat, SymbolicTable

SYS_PERF_EVENT_OPEN = 298  # x86-64
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_SET_FILTER = 0x40082406  # _IOW('$', 6, char *)
#: ``perf_event_attr`` as PERF_ATTR_SIZE_VER0 (64 bytes), which every kernel takes:
#: type, size, config, sample_period, sample_type, read_format, flags, wakeup_events,
#: bp_type, config1.
_ATTR = struct.Struct("=IIQQQQQIIQ")
_libc = ctypes.CDLL(None, use_errno=True)


class CounterError(VmstatsError):
    """A tracepoint counter that cannot be opened (privileges, a kernel without it)."""


def open_counter(event_id: int, tid: int, filter_text: str = "", cpu: int = -1) -> int:
    """A counting fd for tracepoint ``event_id`` in thread ``tid`` (any CPU; or -1: in
    every thread, on ``cpu``), counting only the events ``filter_text`` lets through;
    :class:`CounterError` if not."""
    attr = ctypes.create_string_buffer(_ATTR.pack(PERF_TYPE_TRACEPOINT, _ATTR.size, event_id,
                                                  0, 0, 0, 0, 0, 0, 0))  # fmt: skip
    fd = int(_libc.syscall(SYS_PERF_EVENT_OPEN, attr, tid, cpu, -1, PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        code = ctypes.get_errno()
        hint = " (needs root or CAP_PERFMON)" if code in (errno.EACCES, errno.EPERM) else ""
        raise CounterError(f"cannot count tracepoint {event_id} in thread {tid}: "
                           f"{os.strerror(code)}{hint}")  # fmt: skip
    if filter_text:
        try:
            fcntl.ioctl(fd, PERF_EVENT_IOC_SET_FILTER, ctypes.create_string_buffer(
                filter_text.encode()))  # fmt: skip
        except OSError as exc:
            os.close(fd)
            raise CounterError(f"the kernel refuses the filter {filter_text!r}: "
                               f"{exc.strerror}") from None  # fmt: skip
    return fd


def read_counter(fd: int) -> int:
    """A counter's count so far."""
    return int.from_bytes(os.read(fd, 8), "little")


@dataclass
class ReasonCounters:
    """Per thread, a counter of ``event`` for each value of one symbolic field that the
    table names (the reasons), or those of ``only``."""

    event: EventFormat
    table: SymbolicTable
    fds: dict[int, dict[str, int]] = field(default_factory=dict)  # tid -> reason -> fd

    def open(self, tids: Iterable[int], only: Iterable[str] | None = None) -> None:
        """Counters for these threads (each reason's, filtered by its value)."""
        wanted = set(only) if only is not None else None
        for tid in tids:
            counters: dict[str, int] = {}
            try:
                for value, name in sorted(self.table.names.items()):
                    if wanted is None or name in wanted:
                        text = f"{self.table.field} == {value & 0xFFFFFFFF}"
                        counters[name] = open_counter(self.event.id, tid, text)
            except CounterError:
                for fd in counters.values():
                    os.close(fd)
                raise
            self.fds[tid] = counters

    def counts(self) -> dict[int, dict[str, int]]:
        """Per thread, each reason's count so far."""
        return {tid: {name: read_counter(fd) for name, fd in counters.items()}
                for tid, counters in self.fds.items()}  # fmt: skip

    def close(self) -> None:
        for counters in self.fds.values():
            for fd in counters.values():
                os.close(fd)
        self.fds = {}


def totals(counts: Mapping[int, Mapping[str, int]]) -> dict[str, int]:
    """Each reason's count, summed over threads."""
    out: dict[str, int] = {}
    for per_thread in counts.values():
        for name, count in per_thread.items():
            out[name] = out.get(name, 0) + count
    return out
