"""Word that a VMM is starting: an ``inotify`` watch on ``/dev/kvm`` for ``IN_OPEN``.

Every VMM opens ``/dev/kvm`` to make its VM, moments before it makes its vCPUs and their
stats fds.  The daemon scans for VMs every few seconds; a host that starts and stops
VMs all day (a KubeVirt node) would wait up to a whole interval for each.  An open of
``/dev/kvm`` wakes it instead (:meth:`vmstats.serve.daemon.Daemon.scan` soon after).
inotify says nothing of who opened it (fanotify would, with ``CAP_SYS_ADMIN``), and
anyone allowed to open ``/dev/kvm`` can open it in a loop: the daemon bounds how often an
open makes it scan, and the periodic scan stays the backstop.  Setting the watch needs
read access to the device node (root's, or ``CAP_DAC_READ_SEARCH``); the watch outlives
the privileges dropped after it.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (a name follows, none for a file)
_libc = ctypes.CDLL(None, use_errno=True)


class KvmOpens:
    """An inotify fd that becomes readable when ``path`` is opened; :meth:`drain` it."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify: {os.strerror(ctypes.get_errno())}")
        if _libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"cannot watch {path}: {os.strerror(code)}")
        self.fd = fd

    def drain(self) -> int:
        """How many opens were told since the last drain (0 if none); the fd is empty
        after it."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 64 * _EVENT.size)
            except BlockingIOError:
                return count
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                count += bool(mask & IN_OPEN)
                offset += _EVENT.size + size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
