"""The host daemon: every VM found gets a read-only QMP socket of its own.

Every ``scan_interval`` seconds (and at start) the daemon looks for

- processes that hold KVM stats fds they created (:mod:`vmstats.kvm.attach`): it copies
  those fds (stats fds only, never a control fd) and reads them itself, kicking no vCPU;
  vCPUs plugged after the first scan are taken at a later one;
- QEMU QMP sockets named by the configuration (``qmp`` globs): the process behind each
  (``SO_PEERCRED``) is a VM already found by its fds (then the socket adds its VM-level
  stats, its name and its QOM paths) or a QEMU that keeps no fds (7.x: then its stats
  commands are forwarded, :mod:`vmstats.serve.forward`).

Each VM is served at ``RUN_DIR/<name>.qmp`` by the hardened QMP server: the stats
commands, ``query-name``, ``query-cpus-fast``, introspection and HMP ``info stats``; every
other command is QEMU's CommandNotFound.  The daemon watches each VMM's pidfd: when the VMM
exits its clients get an error, then EOF, its fds are closed at once (a held stats fd pins
the dead VM's kernel memory) and its socket is removed.  ``RUN_DIR/vms.json`` lists what
is served, for ``vmstats list``.

Without a socket to ask, vCPUs are numbered by QEMU's CPU index and get the QOM paths
QEMU's pc machine gives them (``/machine/unattached/device[0]``, ``[2]``, ``[3]``...): the
documented scheme.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vmstats.errors import AttachError, ClientError, SocketInUse, VmstatsError
from vmstats.kvm.attach import (
    AttachedVm,
    attach,
    creator_thread,
    owns,
    processes_with_stats_fds,
    stats_fds_by_process,
)
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.kvm.vmm import VmmProcess
from vmstats.limits import RateLimitedLog, ServerLimits
from vmstats.qmp.client import QmpClient, qemu_version
from vmstats.qmp.machine import (
    CpuInfoFast,
    Machine,
    cpus_from_wire,
    name_from_wire,
    pc_props,
    pc_vcpu_path,
)
from vmstats.qmp.server import QMPServer
from vmstats.reader.reading import Reader
from vmstats.serve.discover import cmdline, qemu_name, vm_name
from vmstats.serve.forward import DEFAULT_QMP_TIMEOUT, HostMonitor, QemuSocket
from vmstats.serve.reader import MonitorReader
from vmstats.stats.model import StatsTarget
from vmstats.stats.registry import StatsRegistry

log = logging.getLogger(__name__)


def describe(name: str, pid: int, vcpus: int, local: Collection[StatsTarget],
             qmp: Path | None, socket: Path) -> dict[str, object]:  # fmt: skip
    """A served VM as ``vms.json``, ``vmstats list`` and ``serve --once`` show it."""
    if not local:
        source = "QMP (forwarded)"
    elif StatsTarget.VM in local:
        source = "fds (vm, vcpu)"
    elif qmp is not None:
        source = "fds (vcpu) + QMP (vm)"
    else:
        source = "fds (vcpu only: no QMP socket for VM-level stats)"
    row: dict[str, object] = {"name": name, "pid": pid, "vcpus": vcpus, "source": source,
                              "socket": str(socket)}  # fmt: skip
    if qmp is not None:
        row["qmp"] = str(qmp)
    return row


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
class ServedVm:
    """One VM being served."""

    name: str
    pid: int
    provider: KvmStatsProvider
    monitor: HostMonitor
    server: QMPServer
    socket: Path
    vcpus: dict[int, VcpuStatsFile] = field(default_factory=dict)  # CPU index -> file
    vcpu_ids: set[int] = field(default_factory=set)  # KVM vcpu_ids held
    qmp: Path | None = None
    qemu_version: str = ""  # known from its socket
    reader: MonitorReader | None = None  # for the Prometheus endpoint, made on first use

    def metrics_reader(self) -> MonitorReader:
        """What a scrape reads this VM with: its own monitor, as its clients see it."""
        if self.reader is None:
            self.reader = MonitorReader(self.name, self.monitor, self.metrics_info)
        return self.reader

    def metrics_info(self) -> dict[str, str]:
        return {"pid": str(self.pid), "source": str(self.describe()["source"]),
                "qemu_version": self.qemu_version}  # fmt: skip

    def describe(self) -> dict[str, object]:
        vcpus = len(self.vcpus) or len(self.monitor.machine.cpus)
        return describe(self.name, self.pid, vcpus, self.monitor.local, self.qmp, self.socket)

    def add_vcpus(self, attached: AttachedVm) -> None:
        """Serve vCPUs (at start, or plugged since): their files, paths and threads."""
        known = {cpu.cpu_index: cpu for cpu in self.monitor.machine.cpus}
        for index, file in attached.vcpus.items():
            path = known[index].qom_path if index in known else pc_vcpu_path(index)
            self.vcpus[index] = VcpuStatsFile(path, file)
            if index not in known:
                known[index] = CpuInfoFast(index, path, creator_thread(file), pc_props(index))
        self.vcpu_ids |= attached.vcpu_ids
        self.vcpus = dict(sorted(self.vcpus.items()))
        self.provider.vcpus = list(self.vcpus.values())
        self.monitor.machine.cpus = [known[i] for i in sorted(known)]
        if self.vcpus:
            self.monitor.local.add(StatsTarget.VCPU)

    def use_socket(self, source: ProbedQemu, timeout: float) -> None:
        """The VM's QEMU socket: VM-level stats, QEMU's name and QOM paths from it."""
        self.qmp = source.path
        self.qemu_version = source.version
        self.monitor.qemu = QemuSocket(source.path, timeout)
        self.monitor.machine.name = source.name
        if source.cpus:
            self.monitor.machine.cpus = source.cpus
            paths = {cpu.cpu_index: cpu.qom_path for cpu in source.cpus}
            self.vcpus = {i: VcpuStatsFile(paths.get(i, v.qom_path), v.file)
                          for i, v in self.vcpus.items()}  # fmt: skip
            self.provider.vcpus = list(self.vcpus.values())


class Daemon:
    """Serves the VMs of this host until :meth:`close`.

    ``fds``: find VMs by their stats fds (needs root); ``qmp``: paths or globs of QEMU
    sockets to use as well.  ``dry_run``: find and describe, open no socket (``--once``).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        group: int | None = None,
        scan_interval: float = 5.0,
        limits: ServerLimits | None = None,
        fds: bool = True,
        qmp: Iterable[str] = (),
        qmp_timeout: float = DEFAULT_QMP_TIMEOUT,
        dry_run: bool = False,
    ) -> None:
        self.dry_run = dry_run
        self.run_dir = run_dir
        self.group = group
        self.scan_interval = scan_interval
        self.limits = limits or ServerLimits()
        self.fds = fds
        self.qmp = list(qmp)
        self.qmp_timeout = qmp_timeout
        self.served: dict[int, ServedVm] = {}
        self._sockets: dict[Path, tuple[int, int]] = {}  # QEMU socket -> (inode, pid)
        self._log = RateLimitedLog(log, interval=300.0)
        self._removals: set[asyncio.Task[None]] = set()  # kept until done (asyncio holds weakly)

    async def run(self, stop: asyncio.Event) -> None:
        self.run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o750)  # the group may enter, nobody else
        if self.group is not None:
            os.chown(self.run_dir, -1, self.group)
        try:
            while not stop.is_set():
                await self.scan()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.scan_interval)
        finally:
            await self.close()

    async def scan(self) -> None:
        """Serve the VMs that appeared since the last scan, and their new vCPUs."""
        if self.fds:
            found = stats_fds_by_process(vmms_only=True)
            for pid, attached in vmms(self.served, self._not_served, found):
                await self._try_serve(pid, attached, None)
            for served in list(self.served.values()):
                held = {link.vcpu_id for link in found.get(served.pid, ())}
                if served.vcpus and held - {None} - served.vcpu_ids:
                    await self._hot_plug(served)
        for source in await self._new_sources():
            vm = self.served.get(source.pid)
            if vm is not None:
                vm.use_socket(source, self.qmp_timeout)
                log.info("%s: VM-level stats, name and QOM paths from %s", vm.name, source.path)
            else:
                await self._try_serve(source.pid, None, source)
        self._write_state()

    def _not_served(self, pid: int, why: str) -> None:
        self._log.warning(f"pid:{pid}", "not served: %s", why)

    async def _new_sources(self) -> list[ProbedQemu]:
        """QEMU sockets not probed yet (or replaced since), probed; the ones that fail are
        tried again at the next scan."""
        found = []
        for pattern in self.qmp:
            if not glob.has_magic(pattern) and not os.path.exists(pattern):
                self._log.warning(pattern, "QMP source %s: no such socket (yet)", pattern)
        for path in qmp_socket_paths(self.qmp):
            try:
                inode = os.stat(path).st_ino
            except OSError:
                continue
            seen = self._sockets.get(path)
            if seen is not None and seen[0] == inode and seen[1] in self.served:
                continue
            try:
                source = await probe(path, self.qmp_timeout)
            except ClientError as exc:
                self._log.warning(str(path), "QMP source %s not used for now: %s", path, exc)
                continue
            self._sockets[path] = (inode, source.pid)
            vm = self.served.get(source.pid)
            if vm is None or vm.qmp is None:
                found.append(source)
        return found

    async def _hot_plug(self, vm: ServedVm) -> None:
        """Take the vCPU stats fds a VMM holds that ``vm`` does not serve yet."""
        try:
            attached = attach(vm.pid, skip_vm=True, skip_vcpus=vm.vcpu_ids)
        except AttachError:
            return  # exiting: its pidfd says so
        os.close(attached.pidfd)
        attached.pidfd = -1
        if attached.vcpus:
            vm.add_vcpus(attached)
            log.info("%s: vCPUs %s plugged", vm.name, sorted(attached.vcpus))
            if vm.qmp is not None:  # their QOM paths are QEMU's to tell
                with contextlib.suppress(ClientError):
                    vm.use_socket(await probe(vm.qmp, self.qmp_timeout), self.qmp_timeout)

    async def _try_serve(self, pid: int, attached: AttachedVm | None,
                         source: ProbedQemu | None) -> None:  # fmt: skip
        try:
            await self._serve(pid, attached, source)
        except (VmstatsError, OSError) as exc:
            if attached is not None:
                attached.close()
            log.warning("cannot serve the VM of process %d: %s", pid, exc)

    async def _serve(self, pid: int, attached: AttachedVm | None,
                     source: ProbedQemu | None) -> None:  # fmt: skip
        taken = [vm.name for vm in self.served.values()]
        name = vm_name(pid, taken, source.name if source is not None else None)
        provider = KvmStatsProvider(attached.vm if attached else None, [], VmmProcess(pid))
        if attached is not None:
            os.close(attached.pidfd)  # the provider watches the VMM with a pidfd of its own
            attached.pidfd = -1
        registry = StatsRegistry()
        registry.add_stats_callbacks(provider)
        local = {StatsTarget.VM} if provider.vm is not None else set()
        given = source.name if source is not None else qemu_name(cmdline(pid))
        monitor = HostMonitor(registry, Machine(name=given), local=local)
        socket = self.run_dir / f"{name}.qmp"
        vm = ServedVm(name, pid, provider, monitor, QMPServer(monitor, self.limits), socket)
        if attached is not None:
            vm.add_vcpus(attached)
        if source is not None:
            vm.use_socket(source, self.qmp_timeout)
        if self.dry_run:
            self.served[pid] = vm
            return
        try:
            await vm.server.start_unix(socket, mode=0o660, group=self.group)
        except (SocketInUse, OSError):
            await vm.server.close()
            provider.close()
            raise
        self.served[pid] = vm
        assert provider.vmm is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(provider.vmm.pidfd, lambda: self._start_removal(pid))
        log.info("serving %s (process %d, %s) at %s", name, pid, vm.describe()["source"], socket)

    def readers(self) -> list[Reader]:
        """The VMs a Prometheus scrape reads (``vmstats serve --metrics``)."""
        return [vm.metrics_reader() for vm in self.served.values()]

    def _start_removal(self, pid: int) -> None:
        """The VMM's pidfd is readable (it exited): remove it, in a task kept until done."""
        task = asyncio.get_running_loop().create_task(self._remove(pid))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, pid: int) -> None:
        """The VMM exited: close its fds at once, its clients, its socket."""
        vm = self.served.pop(pid, None)
        if vm is None:
            return
        assert vm.provider.vmm is not None
        if vm.provider.vmm.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(vm.provider.vmm.pidfd)
        closing = asyncio.ensure_future(vm.server.close())
        vm.provider.close()  # reads from now on fail: the VM is gone
        await closing
        self._write_state()
        log.info("%s (process %d) exited: no longer served", vm.name, pid)

    def _write_state(self) -> None:
        if self.dry_run:
            return
        state = [vm.describe() for vm in self.served.values()]
        path = self.run_dir / "vms.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1) + "\n")
        os.chmod(temporary, 0o644)
        temporary.replace(path)

    async def close(self) -> None:
        for pid in list(self.served):
            await self._remove(pid)
        if not self.dry_run:
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / "vms.json").unlink()
