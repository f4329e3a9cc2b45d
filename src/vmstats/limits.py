"""What a server that faces local clients allows them, and the helpers that keep it so:
shared by the QMP sockets (:mod:`vmstats.qmp.server`), the ``/metrics`` endpoint
(:mod:`vmstats.exporter.http`) and the host daemon (:mod:`vmstats.serve.daemon`), which
runs privileged while any local user can connect.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmstats.qmp.jsonstream import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_TOKENS

#: Fds kept free beside the connections (listeners, the reject path, files, the VM's fds).
FD_RESERVE = 32


@dataclass(frozen=True)
class ServerLimits:
    """What one server allows its clients.  Timeouts are seconds; 0 disables one."""

    max_connections: int = 128
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS
    write_timeout: float = 30.0
    message_timeout: float = 30.0
    idle_timeout: float = 600.0


class RateLimitedLog:
    """Log a recurring condition at most once per ``interval`` per key, with a count of
    the occurrences left out: a flood of failures must not become a flood of log lines."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more:
            message += " (%d more since the last report)"
            args = (*args, more)
        self._logger.warning(message, *args)


@functools.cache
def listen_backlog() -> int:
    """The system's maximum listen backlog (``net.core.somaxconn``)."""
    try:
        return max(int(Path("/proc/sys/net/core/somaxconn").read_text()), socket.SOMAXCONN)
    except (OSError, ValueError):
        return socket.SOMAXCONN


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit; the soft limit
    before and after.  The host daemon holds a copy of each vCPU's stats fd, a socket
    and a pidfd per VM: about ten fds a VM of 8 vCPUs, so the usual soft limit of 1,024
    (systemd's default for services, and most shells') served about 100 VMs of a host,
    and refused the others.  That soft limit is kept low for programs that use
    ``select()``, which cannot watch higher fds; vmstats does not (asyncio uses epoll),
    and raising it to the hard limit (524,288 under systemd) is what systemd advises such
    programs to do themselves."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:  # the kernel takes no more than fs.nr_open
        try:
            wanted = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft


def open_files_limit() -> int:
    """This process's (soft) limit of open files."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_budget(reserve: int = FD_RESERVE) -> int:
    """How many more fds this process can open, keeping ``reserve`` free."""
    soft = open_files_limit()
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    try:  # Linux >= 6.2 counts them in the directory's size: no listing of thousands
        open_now = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    return max(1, soft - open_now - reserve)
