"""The daemon's run directory: held by one daemon at a time, and its ``vms.json``.

A second ``vmstats serve`` on the same directory would serve the same VMs again under
other names, warn about every VM at every scan, and on exit delete the first one's
``vms.json``.  So the directory is locked (``flock`` on ``RUN_DIR/.lock``, which the
kernel releases when the daemon dies, however it dies): a second daemon refuses to start,
naming the first, and a daemon removes only files it made while holding the lock.

The directory must be the daemon's own: one it makes, or an empty one, or an earlier
run's (it holds ``.lock``), owned by the daemon's user and written by nobody else.  The
daemon sets its modes and writes files in it as root: given ``/tmp``, ``/etc`` or a
folder another user made (who could plant links there), it refuses, and changes nothing.

Who may see what: the directory is ``0751`` (anyone may pass through to a socket that is
theirs, nobody but the group may list it); ``vms.json``, every VM, is the group's
(``0640``); each ordinary user whose VMs are served gets ``vms-UID.json`` with theirs only
(``0600``, theirs), and each group an ``allow`` rule names gets ``vms-group-GID.json`` with
the VMs it may read (``0640``, the group's): ``vmstats list`` reads those a user may when
``vms.json`` is not for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmstats.errors import RunDirUnfit, SocketInUse, os_reason
from vmstats.qmp.server import STAGING_PREFIX

#: The lock every run leaves in its directory: a directory holding it is an earlier
#: run's, and may be taken again (with the sockets a killed daemon left).
LOCK = ".lock"


def user_state(run_dir: Path, uid: int) -> Path:
    """Where a user's own list of served VMs is."""
    return run_dir / f"vms-{uid}.json"


def group_state(run_dir: Path, gid: int) -> Path:
    """Where the list of the VMs a group may read by an ``allow`` rule is."""
    return run_dir / f"vms-group-{gid}.json"


class RunDir:
    """``RUN_DIR``, claimed by this daemon until :meth:`release`."""

    def __init__(self, path: Path, group: int | None = None) -> None:
        self.path = path
        self.group = group
        self._lock: int | None = None
        self._lists: set[Path] = set()  # the vms-UID.json and vms-group-GID.json made

    @property
    def state(self) -> Path:
        return self.path / "vms.json"

    def claim(self) -> None:
        """Make the directory (the group may enter, nobody else) and lock it;
        :class:`SocketInUse` naming the daemon that holds it.  Once is enough."""
        if self._lock is not None:
            return
        try:
            folder = self._own_directory()
        except OSError as exc:
            raise RunDirUnfit(f"cannot use {self.path} as the run directory: "
                              f"{os_reason(exc)}") from exc  # fmt: skip
        try:
            self._lock = self._lock_in(folder)
            _remove_half_made(folder)
        finally:
            os.close(folder)

    def _lock_in(self, folder: int) -> int:
        """The lock of ``folder`` (an fd of the directory), taken and holding our pid."""
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=folder)  # fmt: skip
        except OSError as exc:  # an earlier run's, as another user (root by hand, say)
            raise RunDirUnfit(f"cannot use {self.path} as the run directory: its {LOCK} "
                              f"cannot be opened ({os_reason(exc)}): an earlier run's, as "
                              "another user? Remove it") from exc  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SocketInUse(f"{self.path} is in use by another vmstats serve (process "
                              f"{holder}): give this one another --run-dir") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _own_directory(self) -> int:
        """The directory, made or checked to be fit, with its modes set: an fd of it (what
        was checked is what is changed, even if its path is swapped meanwhile)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        made = True
        try:
            os.mkdir(self.path, 0o751)
        except FileExistsError:
            made = False
        try:
            folder = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)  # fmt: skip
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self.path.is_symlink():
                raise RunDirUnfit(f"{self.path} is a symbolic link: give the directory "
                                  "itself") from None  # fmt: skip
            raise
        try:
            if not made:
                _check_fit(self.path, folder)
            os.fchmod(folder, 0o751)
            if self.group is not None:
                os.fchown(folder, -1, self.group)
        except BaseException:
            os.close(folder)
            raise
        return folder

    def write_state(self, rows: Sequence[dict[str, object]],
                    owners: Mapping[int, Sequence[dict[str, object]]] = {},
                    groups: Mapping[int, Sequence[dict[str, object]]] = {}) -> None:  # fmt: skip
        """``vms.json`` (every VM, for the group), each user's ``vms-UID.json`` (their
        ``owners`` rows) and each allowed group's ``vms-group-GID.json``, each replaced at
        once: readers never see half of one."""
        self._replace(self.state, rows, 0o640, None, self.group)
        lists = set()
        for uid, theirs in owners.items():
            lists.add(self._replace(user_state(self.path, uid), theirs, 0o600, uid, None))
        for gid, theirs in groups.items():
            lists.add(self._replace(group_state(self.path, gid), theirs, 0o640, None, gid))
        for path in self._lists - lists:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._lists = lists

    def _replace(self, path: Path, rows: Sequence[dict[str, object]], mode: int,
                 uid: int | None, gid: int | None) -> Path:  # fmt: skip
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(list(rows), indent=1) + "\n")
        os.chmod(temporary, mode)
        if uid is not None or gid is not None:
            os.chown(temporary, -1 if uid is None else uid, -1 if gid is None else gid)
        temporary.replace(path)
        return path

    def release(self) -> None:
        """Remove ``vms.json`` and let the directory go; nothing if it was never ours."""
        if self._lock is None:
            return
        for path in [self.state, *self._lists]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._lists = set()
        os.close(self._lock)
        self._lock = None


def _remove_half_made(folder: int) -> None:
    """Remove the sockets an earlier run made in ``folder`` (locked: ours alone) and
    never renamed into place: it died between the two."""
    for name in os.listdir(folder):
        if not name.startswith(STAGING_PREFIX):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=folder)


def _check_fit(path: Path, folder: int) -> None:
    """:class:`RunDirUnfit` unless the existing directory ``folder`` may be taken: ours,
    written by nobody else, and empty or an earlier run's."""
    st = os.fstat(folder)
    problem = None
    if st.st_uid != os.geteuid():
        problem = (f"belongs to {_user(st.st_uid)}, not to this daemon's user "
                   f"({_user(os.geteuid())})")  # fmt: skip
    elif st.st_mode & 0o022:
        problem = f"may be written by others (mode {st.st_mode & 0o7777:04o})"
    elif (entries := os.listdir(folder)) and LOCK not in entries:
        problem = f"holds files that are not an earlier run's ({len(entries)} of them)"
    if problem is not None:
        raise RunDirUnfit(f"{path} {problem}: the daemon sets its run directory's modes and "
                          "writes in it, so it takes only its own (a new or empty one, or "
                          "an earlier run's)")  # fmt: skip


def _user(uid: int) -> str:
    """A user as people know them: name and uid."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
