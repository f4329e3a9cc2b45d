"""Which processes on this host are VMs to serve, what to call them, and what their QEMU
sockets say.

A VMM is a process holding KVM stats fds that it created itself (a process holding
copies, such as the demo's parent or another reader, is not one): :func:`vmms` finds
them and copies their stats fds.  A QEMU socket named by the configuration is asked who
serves it (``SO_PEERCRED``), its name and its vCPUs (:func:`probe`).  A VM's name is
QEMU's ``-name`` (``-name web1`` or ``-name guest=web1,...``) when it has one, else
``<comm>-<pid>``; names are made unique on the host and safe as file names.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import re
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmstats.errors import AttachError, ClientError
from vmstats.kvm.attach import AttachedVm, attach, owns, processes_with_stats_fds
from vmstats.qmp.client import QmpClient, qemu_version
from vmstats.qmp.machine import CpuInfoFast, cpus_from_wire, name_from_wire

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
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


def vm_name(pid: int, taken: Iterable[str] = (), given: str | None = None) -> str:
    """A name for the VM of ``pid``: ``given`` (what its QEMU's ``query-name`` said), else
    QEMU's ``-name``, else ``<comm>-<pid>``; unique among ``taken`` (``-<pid>`` is added on
    a clash) and safe as a file name."""
    name = given or qemu_name(cmdline(pid))
    if name is None:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "vm"
        name = f"{comm}-{pid}"
    name = _UNSAFE.sub("_", name).strip("._") or f"vm-{pid}"
    if name in set(taken):
        name = f"{name}-{pid}"
    return name


def vmms(
    skip: Collection[int] = (),
    report: Callable[[int, str], None] | None = None,
    found: Collection[int] | None = None,
) -> list[tuple[int, AttachedVm]]:
    """Every VMM on the host we can look into (but ``skip``), with copies of its stats fds.
    A VMM that cannot be taken is ``report``-ed (logged by default).  ``found``: the VMMs'
    pids when the caller has listed them already."""
    out = []
    for pid in processes_with_stats_fds(vmms_only=True) if found is None else found:
        if pid in skip:
            continue
        try:
            attached = attach(pid)
        except AttachError as exc:
            if report is None:
                log.info("process %d: %s", pid, exc)
            else:
                report(pid, str(exc))
            continue
        if not owns(pid, attached):  # holds copies of someone else's fds
            attached.close()
            continue
        out.append((pid, attached))
    return out


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


def qmp_socket_paths(patterns: Iterable[str]) -> list[Path]:
    """The unix sockets the ``patterns`` (paths or globs) name now."""
    out: set[Path] = set()
    for pattern in patterns:
        for match in glob.glob(pattern) or ([pattern] if not glob.has_magic(pattern) else []):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(match).st_mode):
                    out.add(Path(match))
    return sorted(out)
