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

When many processes changed at once (a daemon's first scan, VMs starting together), one
pass of BPF iterators lists them all in the kernel instead (:mod:`vmstats.kvm.iterate`:
about 10 ms at 256 VMs, against 70 to 100 through ``/proc``); the budget still applies,
so that what is listed does not depend on how.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from vmstats.errors import AttachError
from vmstats.kvm.attach import FdListing, StatsFdLink, fd_links, kvm_fds
from vmstats.kvm.iterate import Iteration, IteratorUnavailable, KvmIterator, PassTooBig

log = logging.getLogger(__name__)

#: The fds read (one ``readlink`` each) in one scan at most: about 0.4 s here.
DEFAULT_BUDGET = 25_000
#: Processes changed since the last scan from which one pass of the iterators lists them.
#: A pass walks every open file of the host (10 ms at 256 VMs, about 50 with 165,000
#: fds): a few processes changed cost less through ``/proc`` (0.3 ms a VMM).
ITERATE_FROM = 16


def fd_counts_known() -> bool:
    """Does ``stat`` on ``/proc/PID/fd`` give the number of fds here (Linux >= 6.2)?"""
    try:
        return os.stat("/proc/self/fd").st_size > 0
    except OSError:
        return False


@dataclass(frozen=True)
class _Listed:
    signature: tuple[int, int]  # (inode, fds) of /proc/PID/fd when it was listed
    listing: FdListing  # its stats and VM control fds (a VMM has one; a reader none)


@dataclass
class ScanResult:
    """What one scan found."""

    vmms: dict[int, list[StatsFdLink]]  # every VMM (as last listed): pid -> its stats fds
    changed: set[int] = field(default_factory=set)  # listed by this scan
    #: the VMMs listed by this scan, for :func:`attach`
    listings: dict[int, FdListing] = field(default_factory=dict)
    deferred: int = 0  # processes left for the next scan: the budget ran out
    too_big: dict[int, int] = field(default_factory=dict)  # pid -> fds: never looked into
    processes: int = 0  # looked at (one stat each)
    by_iterator: bool = False  # listed in one pass of the iterators, not through /proc


class ProcessScanner:
    """The VMMs of this host, relisting only processes whose fd tables changed."""

    def __init__(self, budget: int = DEFAULT_BUDGET,
                 iterate_from: int | None = ITERATE_FROM) -> None:  # fmt: skip
        self.budget = budget
        #: changed processes from which the iterators list them; None: never
        self.iterate_from = iterate_from
        self._counted = fd_counts_known()
        self._listed: dict[int, _Listed] = {}
        self._iterator: KvmIterator | None = None
        self.unavailable: str | None = None  # why the iterators cannot list, once tried
        self._too_big = False  # the last pass handed back more than the budget

    def prepare(self) -> None:
        """Load the iterators now, while this process may (a daemon that gives up
        ``CAP_BPF`` may still run programs it loaded); where they cannot be, say why."""
        if self.iterate_from is not None and self._iterator is None and not self.unavailable:
            try:
                self._iterator = KvmIterator()
            except IteratorUnavailable as exc:
                self._unavailable(str(exc))

    def _unavailable(self, why: str) -> None:
        self.unavailable = why
        log.info("processes' fds are listed through /proc: %s", why)

    def _iterate(self) -> Iteration | None:
        """One pass of the iterators (loaded at the first, if not prepared), or None
        where they cannot list here: said once, and ``/proc`` serves from then on."""
        self.prepare()
        if self._iterator is None:
            return None
        try:
            found = self._iterator.read(self.budget)
        except PassTooBig as exc:
            if not self._too_big:  # said once, until a pass fits again
                log.info("KVM fds listed through /proc this time: the iterators handed "
                         "back %s, more than a scan reads", exc)  # fmt: skip
            self._too_big = True
            return None
        except OSError as exc:
            self.close()
            self._unavailable(f"a pass failed: {exc.strerror}")
            return None
        self._too_big = False
        return found

    def close(self) -> None:
        """Let the iterators go."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

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
        iteration = None
        if self.iterate_from is not None and len(changed) >= self.iterate_from:
            iteration = self._iterate()
            result.by_iterator = iteration is not None
        left = self.budget
        for index, pid in enumerate(changed):
            fds = current[pid][1]
            if fds > self.budget:
                result.too_big[pid] = fds
                self._listed[pid] = _Listed(current[pid], _NOTHING)
                continue
            if fds > left:
                result.deferred = len(changed) - index
                break
            if iteration is not None:  # no files there: none of KVM (or it ended)
                listing = kvm_fds(iteration.files.get(pid, ()), iteration.threads.get(pid, {}),
                                  iteration.uids.get(pid))  # fmt: skip
            else:
                try:
                    listing = fd_links(pid)
                except AttachError:
                    listing = _NOTHING  # gone, or not ours to look into: until it changes
            left -= max(fds, 1)
            self._listed[pid] = _Listed(current[pid], listing)
            result.changed.add(pid)
            if listing.links and listing.control:
                result.listings[pid] = listing
        result.vmms = {pid: listed.listing.links for pid, listed in sorted(self._listed.items())
                       if listed.listing.links and listed.listing.control}  # fmt: skip
        return result


_NOTHING = FdListing([], [])
_NONE = _Listed((-1, -1), _NOTHING)
