"""The daemon's run directory: held by one daemon at a time, and its ``vms.json``.

A second ``vmstats serve`` on the same directory would serve the same VMs again under
other names, warn about every VM at every scan, and on exit delete the first one's
``vms.json``.  So the directory is locked (``flock`` on ``RUN_DIR/.lock``, which the
kernel releases when the daemon dies, however it dies): a second daemon refuses to start,
naming the first, and a daemon removes only files it made while holding the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path

from vmstats.errors import SocketInUse


class RunDir:
    """``RUN_DIR``, claimed by this daemon until :meth:`release`."""

    def __init__(self, path: Path, group: int | None = None) -> None:
        self.path = path
        self.group = group
        self._lock: int | None = None

    @property
    def state(self) -> Path:
        return self.path / "vms.json"

    def claim(self) -> None:
        """Make the directory (the group may enter, nobody else) and lock it;
        :class:`SocketInUse` naming the daemon that holds it.  Once is enough."""
        if self._lock is not None:
            return
        self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(self.path, 0o750)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SocketInUse(f"{self.path} is in use by another vmstats serve (process "
                              f"{holder}): give this one another --run-dir") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd

    def write_state(self, rows: Sequence[dict[str, object]]) -> None:
        """``vms.json`` replaced at once (readers never see half of it)."""
        temporary = self.state.with_suffix(".tmp")
        temporary.write_text(json.dumps(list(rows), indent=1) + "\n")
        os.chmod(temporary, 0o644)
        temporary.replace(self.state)

    def release(self) -> None:
        """Remove ``vms.json`` and let the directory go; nothing if it was never ours."""
        if self._lock is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()
        os.close(self._lock)
        self._lock = None
