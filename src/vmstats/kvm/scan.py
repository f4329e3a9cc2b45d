"""Finding a host's VMMs at every scan without reading every fd of every process.

Telling a VMM from any other process takes reading its fd links (``/proc/PID/fd``): about
70 us a process and 15 us an fd here, so 2,000 idle processes made a scan 136 ms, and
one process holding 19,000 fds added 310 ms, at every scan, paid by the daemon forever.
So a process is listed again only when its fd table changed: since Linux 6.2 a ``stat``
of ``/proc/PID/fd`` gives its number of fds, and the directory's inode is new for a new
process with the same pid (or after the kernel evicted it: a harmless extra listing).
One ``stat`` a process is what a steady scan costs.

And the listing is bounded: at most :data:`DEFAULT_BUDGET` fds a scan, the processes with
the fewest fds first (a VMM has a few dozen per vCPU at most; a process flooding its fd
table goes last); what is left is listed at the next scan.  A process with more fds than
a whole scan's budget is not looked into at all, and said so.  Whoever can start
processes can thus delay the finding of a new VM by a scan or a few, never make a scan
cost more than its budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vmstats.errors import AttachError
from vmstats.kvm.attach import StatsFdLink, fd_links

#: The fds read (one ``readlink`` each) in one scan at most: about 0.4 s here.
DEFAULT_BUDGET = 25_000


def fd_counts_known() -> bool:
    """Does ``stat`` on ``/proc/PID/fd`` give the number of fds here (Linux >= 6.2)?"""
    try:
        return os.stat("/proc/self/fd").st_size > 0
    except OSError:
        return False


@dataclass(frozen=True)
class _Listed:
    signature: tuple[int, int]  # (inode, fds) of /proc/PID/fd when it was listed
    links: list[StatsFdLink]
    control: list[int]  # its VM control fds: a VMM has one (a reader holding copies none)


@dataclass
class ScanResult:
    """What one scan found."""

    vmms: dict[int, list[StatsFdLink]]  # every VMM (as last listed): pid -> its stats fds
    changed: set[int] = field(default_factory=set)  # listed by this scan
    #: the VMMs listed by this scan: pid -> (stats fds, control fds), for :func:`attach`
    listings: dict[int, tuple[list[StatsFdLink], list[int]]] = field(default_factory=dict)
    deferred: int = 0  # processes left for the next scan: the budget ran out
    too_big: dict[int, int] = field(default_factory=dict)  # pid -> fds: never looked into
    processes: int = 0  # looked at (one stat each)


class ProcessScanner:
    """The VMMs of this host, relisting only processes whose fd tables changed."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._counted = fd_counts_known()
        self._listed: dict[int, _Listed] = {}

    def forget(self, pid: int) -> None:
        """List ``pid`` again at the next scan, changed or not (it could not be served
        for a reason that may pass: the daemon was out of fds)."""
        self._listed.pop(pid, None)

    def scan(self) -> ScanResult:
        """Look at every process (but this one) once: list those that changed, within
        the budget."""
        me = os.getpid()
        current: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                try:
                    st = os.stat(f"/proc/{entry}/fd")
                except OSError:
                    continue  # gone, or a kernel thread's
                current[int(entry)] = (st.st_ino, st.st_size)
        for pid in self._listed.keys() - current.keys():
            del self._listed[pid]
        changed = sorted((pid for pid, sig in current.items()
                          if not self._counted or self._listed.get(pid, _NONE).signature != sig),
                         key=lambda pid: current[pid][1])  # fmt: skip
        result = ScanResult({}, processes=len(current))
        left = self.budget
        for index, pid in enumerate(changed):
            fds = current[pid][1]
            if fds > self.budget:
                result.too_big[pid] = fds
                self._listed[pid] = _Listed(current[pid], [], [])
                continue
            if fds > left:
                result.deferred = len(changed) - index
                break
            try:
                links, control = fd_links(pid)
            except AttachError:
                links, control = [], []  # gone, or not ours to look into: until it changes
            left -= max(fds, 1)
            self._listed[pid] = _Listed(current[pid], links, control)
            result.changed.add(pid)
            if links and control:
                result.listings[pid] = (links, control)
        result.vmms = {pid: listed.links for pid, listed in sorted(self._listed.items())
                       if listed.links and listed.control}  # fmt: skip
        return result


_NONE = _Listed((-1, -1), [], [])
