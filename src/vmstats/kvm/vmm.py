"""The process that owns a VM (its VMM), watched through a pidfd.

A stats fd outlives its VM: after the VMM exits, reads still succeed and return the last
values, frozen, with no error (kvm-host-notes §4).  So whoever serves a VM's stats must
know whether its VMM lives, at the moment of every read: :meth:`VmmProcess.alive` polls
the pidfd (one syscall, about a microsecond), and the pidfd becomes readable when the
process exits, for an event loop to close everything at once.
"""

from __future__ import annotations

import os
import select

from vmstats.errors import VmGone


class VmmProcess:
    """A VMM process by pid, watched from its pidfd (which the caller must close):
    ``pidfd``, one opened already (kept: it is the process the caller looked into, never
    a later one given the same pid), else one opened now."""

    def __init__(self, pid: int, pidfd: int | None = None) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid) if pidfd is None else pidfd
        self._poll = select.poll()
        self._poll.register(self.pidfd, select.POLLIN)
        self._gone = False

    def alive(self) -> bool:
        """Is the process still running?  Once it has exited, always False."""
        if not self._gone and self._poll.poll(0):
            self._gone = True
        return not self._gone

    def check(self) -> None:
        """Raise :class:`VmGone` if the process has exited."""
        if not self.alive():
            raise VmGone(f"KVM stats: the VM is gone (its process {self.pid} exited)")

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
            self._gone = True
