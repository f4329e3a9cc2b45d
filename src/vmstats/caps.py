"""This process's Linux capabilities: which it has, and giving up the ones it no longer
needs.

``vmstats serve`` needs two privileges for its work: ``CAP_DAC_READ_SEARCH`` to list
another user's ``/proc/PID/fd`` (the kernel checks file permissions there, not ptrace
rights), and ``CAP_SYS_PTRACE`` to read those fds' links and copy the stats fds
(``pidfd_getfd``); with ``CAP_CHOWN`` to give its sockets their group when it is not a
member.  Whatever else it was started with (all of
root's, or ``CAP_NET_BIND_SERVICE`` for a low metrics port) serves only its start, and is
dropped once it listens (:func:`keep_only`): from then on a flaw in the daemon can do no
more than those allow.  Root's files stay root's, which needs no capability.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_NET_BIND_SERVICE = 10
CAP_SYS_PTRACE = 19
CAP_PERFMON = 38
CAP_BPF = 39
NAMES = {
    CAP_CHOWN: "CAP_CHOWN",
    CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE",
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}

_SYS_CAPGET, _SYS_CAPSET = 125, 126  # x86-64
_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def sets(pid: int | str = "self") -> dict[str, int]:
    """A process's capability sets from ``/proc/PID/status`` (``CapEff``, ``CapPrm``...),
    as bit masks."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out


def has(*capabilities: int) -> bool:
    """Are all these capabilities in this process's effective set?"""
    effective = sets()["CapEff"]
    return all(effective >> capability & 1 for capability in capabilities)


def keep_only(capabilities: set[int]) -> None:
    """Drop every capability but ``capabilities`` from this process's effective,
    permitted and inheritable sets, and clear its ambient set: for good (a capability
    left out of the permitted set cannot be taken back).  OSError if the kernel refuses."""
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.syscall(_SYS_CAPGET, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for index in (0, 1):
        mask = sum(1 << (c - 32 * index) for c in capabilities if 32 * index <= c < 32 * index + 32)
        data[index].effective &= mask
        data[index].permitted &= mask
        data[index].inheritable &= mask
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "clearing the ambient capabilities failed")
    if _libc.syscall(_SYS_CAPSET, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def names(mask: int) -> list[str]:
    """The names of the capabilities in ``mask`` that vmstats knows, else their numbers."""
    return [NAMES.get(bit, f"cap {bit}") for bit in range(64) if mask >> bit & 1]
