"""Which processes on this host are VMs to serve, what to call them, and what their QEMU
sockets say.

A VMM is a process holding KVM stats fds that it created itself (a process holding
copies, such as the demo's parent or another reader, is not one): :func:`vmms` finds
them and copies their stats fds.  A QEMU socket named by the configuration is asked who
serves it (``SO_PEERCRED``), its name and its vCPUs (:func:`probe`).  A VM's name is
QEMU's ``-name`` (``-name web1`` or ``-name guest=web1,...``) when it has one, else
``<comm>-<pid>``; names are made unique on the host and safe as file names.

A name is what a VMM claims, and anyone with ``/dev/kvm`` can run one and call it ``db1``.
So a VM whose VMM runs as an ordinary user (``UID_MIN``..``UID_MAX`` of
``/etc/login.defs``) is served as ``USER~NAME``: ``~`` is in no other name (names are made
of ``[A-Za-z0-9._-]``) and in no user name, so no user can take a system VM's name (root's,
libvirt's QEMU user's) or another user's.  Names are at most :data:`NAME_MAX` bytes (a
unix socket's path is at most 107): a longer one keeps its start and gets a hash.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import itertools
import logging
import os
import pwd
import re
import stat
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmstats.errors import AttachError, ClientError
from vmstats.kvm.attach import (
    AttachedVm,
    FdListing,
    attach,
    owns,
    processes_with_stats_fds,
    read_proc,
)
from vmstats.qmp.client import QmpClient, qemu_version
from vmstats.qmp.machine import CpuInfoFast, cpus_from_wire, name_from_wire

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: The longest served name, in bytes: with ``.qmp`` and a run directory's path it must
#: fit a unix socket's 107 bytes.
NAME_MAX = 48
#: Separates an ordinary user's name from what their VMM claims (in no safe name).
OWNER_MARK = "~"


def cmdline(pid: int) -> list[str]:
    try:
        raw = read_proc(f"/proc/{pid}/cmdline")
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def qemu_name(args: list[str]) -> str | None:
    """The value of QEMU's ``-name`` option (its ``guest=`` form too), or None."""
    for option, value in itertools.pairwise(args):
        if option in ("-name", "--name"):
            first = value.split(",")[0]
            return first.removeprefix("guest=") or None
    return None


def processes_with_uuid(uuid: str) -> list[int]:
    """The processes whose command line gives this VM UUID (QEMU's ``-uuid``, which
    libvirt passes for every domain)."""
    wanted = uuid.lower()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            args = cmdline(int(entry))
            if any(option == "-uuid" and value.lower() == wanted
                   for option, value in itertools.pairwise(args)):  # fmt: skip
                out.append(int(entry))
    return out


def vm_name(pid: int, taken: Container[str] = (), given: str | None = None,
            longest: int = NAME_MAX, uid: int | None = None) -> str:  # fmt: skip
    """A name for the VM of ``pid``: ``given`` (what its QEMU's ``query-name`` said), else
    QEMU's ``-name``, else ``<comm>-<pid>``; ``USER~`` before it when an ordinary user runs
    the VMM (``uid``, when the caller knows it already, else looked up); unique among
    ``taken`` (``-<pid>`` is added on a clash), safe as a file name and at most ``longest``
    bytes."""
    claimed = given or qemu_name(cmdline(pid))
    if claimed is None:
        try:
            comm = read_proc(f"/proc/{pid}/comm").decode(errors="replace").strip()
        except OSError:
            comm = "vm"
        claimed = f"{comm}-{pid}"
    owner = owner_name(uid if uid is not None else process_uid(pid))
    return served_name(claimed, pid, owner, taken, longest)


def served_name(claimed: str, pid: int, owner: str | None, taken: Container[str] = (),
                longest: int = NAME_MAX) -> str:  # fmt: skip
    """``claimed`` made a served name: safe characters only, ``OWNER~`` first when an
    ordinary user's VMM claims it, short enough for a socket path, and unique."""
    name = _UNSAFE.sub("_", claimed).strip("._") or f"vm-{pid}"
    prefix = "" if owner is None else f"{owner}{OWNER_MARK}"
    room = max(longest - len(prefix), 16)  # the owner is kept whole: it is the point
    if len(name) > room:  # ASCII only by now
        digest = hashlib.sha256(claimed.encode(errors="surrogateescape")).hexdigest()[:8]
        name = f"{name[: room - 9]}-{digest}"
    if prefix + name in taken:
        name = f"{name[: room - len(str(pid)) - 1]}-{pid}"
    return prefix + name


@functools.cache
def _login_range() -> range:
    """Ordinary users' uids: ``UID_MIN``..``UID_MAX`` of ``/etc/login.defs`` (1000..60000
    when it does not say)."""
    found = {"UID_MIN": 1000, "UID_MAX": 60000}
    with contextlib.suppress(OSError):
        for line in Path("/etc/login.defs").read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) == 2 and words[0] in found and words[1].isdigit():
                found[words[0]] = int(words[1])
    return range(found["UID_MIN"], found["UID_MAX"] + 1)


def process_uid(pid: int) -> int | None:
    """The effective uid ``pid`` runs as, or None if it is gone."""
    try:
        status = read_proc(f"/proc/{pid}/status")
    except OSError:
        return None
    start = status.find(b"\nUid:")  # a line "Uid:\treal\teffective\tsaved\tfs"
    if start < 0:
        return None
    uids = status[start + 5 : status.find(b"\n", start + 5)].split()
    return int(uids[1]) if len(uids) > 1 else None


def ordinary_user(uid: int | None) -> int | None:
    """``uid`` if it is an ordinary user's (not root's, not a system user's such as
    libvirt's QEMU user, not ours), else None."""
    if uid is None or uid == os.geteuid() or uid not in _login_range():
        return None
    return uid


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """A user's name, safe in a served name (the uid when it has no account)."""
    try:
        return _UNSAFE.sub("_", pwd.getpwuid(uid).pw_name) or str(uid)
    except KeyError:
        return str(uid)


def forget_accounts() -> None:
    """Look users and ``/etc/login.defs`` up anew from now on (a scan names hundreds of
    VMs of a few users: looked up once per scan, not once per VM)."""
    _login_range.cache_clear()
    user_name.cache_clear()


def owner_name(uid: int | None) -> str | None:
    """``uid`` as a name safe in a served name when it is an ordinary user's; None for
    system users (root, libvirt's QEMU user...) and for ourselves."""
    ordinary = ordinary_user(uid)
    return None if ordinary is None else user_name(ordinary)


def vmms(
    skip: Collection[int] = (),
    report: Callable[[int, AttachError], None] | None = None,
    found: Mapping[int, FdListing] | None = None,
) -> Iterator[tuple[int, AttachedVm]]:
    """Every VMM on the host we can look into (but ``skip``), with copies of its stats fds,
    one at a time (each taken when the caller asks for the next: the daemon serves each
    before it takes the next).  A VMM that cannot be taken is ``report``-ed (logged by
    default).  ``found``: the VMMs with their fds, when the caller has listed them
    already."""
    listings = found if found is not None else {
        pid: None for pid in processes_with_stats_fds(vmms_only=True)}  # fmt: skip
    for pid, listed in listings.items():
        if pid in skip:
            continue
        try:
            attached = attach(pid, listed=listed)
        except AttachError as exc:
            if report is None:
                log.info("process %d: %s", pid, exc)
            else:
                report(pid, exc)
            continue
        if not owns(pid, attached):  # holds copies of someone else's fds
            attached.close()
            continue
        yield pid, attached


@dataclass
class ProbedQemu:
    """What a QEMU's socket said about its VM when probed."""

    path: Path
    pid: int
    name: str | None
    cpus: list[CpuInfoFast]
    version: str = ""  # QEMU's, major.minor.micro


async def probe(path: Path, timeout: float) -> ProbedQemu:
    """Ask a QEMU socket who serves it (``SO_PEERCRED``), its name and its vCPUs; one
    connection, closed at once.  :class:`ClientError` if it cannot tell."""
    async with QmpClient(str(path), timeout) as qmp:
        pid = qmp.peer_pid
        if pid is None:
            raise ClientError(f"{path}: cannot tell which process serves it")
        await qmp.stats_commands()
        name = name_from_wire(await qmp.value("query-name"))
        version = qemu_version(await qmp.value("query-version")) or ""
        cpus = cpus_from_wire(await qmp.value("query-cpus-fast"))
    return ProbedQemu(path, pid, name, cpus, version)


def qmp_socket_paths(patterns: Iterable[str], links: list[Path] | None = None) -> list[Path]:
    """The unix sockets the ``patterns`` (paths or globs) name now.  A symbolic link that a
    glob matches is not followed (and added to ``links``): whoever may write in a globbed
    directory could point it at a socket they may not open themselves (another user's
    QEMU monitor), and the daemon, which may, would talk to it for them.  A path given
    whole is the admin's, and followed."""
    out: set[Path] = set()
    for pattern in patterns:
        magic = glob.has_magic(pattern)
        for match in glob.glob(pattern) or ([pattern] if not magic else []):
            with contextlib.suppress(OSError):
                if magic and stat.S_ISLNK(os.lstat(match).st_mode):
                    if links is not None:
                        links.append(Path(match))
                    continue
                if stat.S_ISSOCK(os.stat(match).st_mode):
                    out.add(Path(match))
    return sorted(out)
