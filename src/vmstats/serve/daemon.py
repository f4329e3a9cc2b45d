"""The host daemon: every VMM found gets a read-only QMP socket of its own.

Every ``scan_interval`` seconds (and at start) the daemon looks for processes that hold
KVM stats fds they created (:mod:`vmstats.kvm.attach`), copies those fds (stats fds only,
never a control fd) and serves them at ``RUN_DIR/<name>.qmp`` with the hardened QMP server:
``query-stats``, ``query-stats-schemas``, introspection and HMP ``info stats``; every
other command is QEMU's CommandNotFound.  It watches each VMM's pidfd: when the VMM exits
its clients get an error, then EOF, its fds are closed at once (a held stats fd pins the
dead VM's kernel memory) and its socket is removed.  ``RUN_DIR/vms.json`` lists what is
served, for ``vmstats list``.

vCPUs are numbered by QEMU's CPU index and get the QOM paths QEMU's pc machine gives them
(``/machine/unattached/device[0]``, ``[2]``, ``[3]``...): without a QMP socket to ask, that
is the documented scheme.  Not yet: QMP sources (forwarding to a QEMU 7.x), hot-plugged
vCPUs after the first scan, configuration files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from vmstats.demo.vm import qemu_vcpu_path
from vmstats.errors import SocketInUse, VmstatsError
from vmstats.kvm.attach import (
    AttachedVm,
    AttachError,
    attach,
    creator_thread,
    owns,
    processes_with_stats_fds,
)
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.kvm.vmm import VmmProcess
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import QMPServer, ServerLimits
from vmstats.serve.discover import vm_name
from vmstats.stats.registry import StatsRegistry

log = logging.getLogger(__name__)


@dataclass
class ServedVm:
    """One VMM being served."""

    name: str
    pid: int
    provider: KvmStatsProvider
    server: QMPServer
    socket: Path

    def describe(self) -> dict[str, object]:
        return describe(self.name, self.pid, len(self.provider.vcpus),
                        self.provider.vm is not None, self.socket)  # fmt: skip


def describe(name: str, pid: int, vcpus: int, has_vm: bool, socket: Path) -> dict[str, object]:
    """A served VM as ``vms.json``, ``vmstats list`` and ``serve --once`` show it."""
    source = "fds (vm, vcpu)" if has_vm else "fds (vcpu)"
    return {"name": name, "pid": pid, "vcpus": vcpus, "source": source, "socket": str(socket)}


def vmms(skip: Collection[int] = ()) -> list[tuple[int, AttachedVm]]:
    """Every VMM on the host we can look into (but ``skip``), with copies of its stats fds."""
    out = []
    for pid in processes_with_stats_fds(vmms_only=True):
        if pid in skip:
            continue
        try:
            attached = attach(pid)
        except AttachError as exc:
            log.info("process %d: %s", pid, exc)
            continue
        if not owns(pid, attached):  # holds copies of someone else's fds
            attached.close()
            continue
        out.append((pid, attached))
    return out


class Daemon:
    """Serves the VMs of this host until :meth:`close`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        group: int | None = None,
        scan_interval: float = 5.0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.group = group
        self.scan_interval = scan_interval
        self.limits = limits or ServerLimits()
        self.served: dict[int, ServedVm] = {}

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
        """Serve the VMMs that appeared since the last scan."""
        for pid, attached in vmms(skip=self.served):
            try:
                await self._serve(pid, attached)
            except (VmstatsError, OSError) as exc:
                attached.close()
                log.warning("cannot serve the VM of process %d: %s", pid, exc)
        self._write_state()

    async def _serve(self, pid: int, attached: AttachedVm) -> None:
        name = vm_name(pid, (vm.name for vm in self.served.values()))
        vcpus = [VcpuStatsFile(qemu_vcpu_path(i), f) for i, f in attached.vcpus.items()]
        provider = KvmStatsProvider(attached.vm, vcpus, VmmProcess(pid))
        os.close(attached.pidfd)  # the provider watches the VMM with a pidfd of its own
        attached.pidfd = -1
        registry = StatsRegistry()
        registry.add_stats_callbacks(provider)
        machine = Machine.pc((i, v.qom_path, creator_thread(v.file))
                             for i, v in zip(attached.vcpus, vcpus, strict=True))  # fmt: skip
        server = QMPServer(Monitor(registry, machine), self.limits)
        socket = self.run_dir / f"{name}.qmp"
        try:
            await server.start_unix(socket, mode=0o660, group=self.group)
        except (SocketInUse, OSError):
            await server.close()
            provider.close()
            raise
        vm = ServedVm(name, pid, provider, server, socket)
        self.served[pid] = vm
        assert provider.vmm is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(provider.vmm.pidfd, lambda: loop.create_task(self._remove(pid)))
        log.info("serving %s (process %d, %d vCPUs) at %s", name, pid, len(vcpus), socket)

    async def _remove(self, pid: int) -> None:
        """The VMM exited: close its fds at once, its clients, its socket."""
        vm = self.served.pop(pid, None)
        if vm is None:
            return
        assert vm.provider.vmm is not None
        asyncio.get_running_loop().remove_reader(vm.provider.vmm.pidfd)
        closing = asyncio.ensure_future(vm.server.close())
        vm.provider.close()  # reads from now on fail: the VM is gone
        await closing
        self._write_state()
        log.info("%s (process %d) exited: no longer served", vm.name, pid)

    def _write_state(self) -> None:
        state = [vm.describe() for vm in self.served.values()]
        path = self.run_dir / "vms.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1) + "\n")
        os.chmod(temporary, 0o644)
        temporary.replace(path)

    async def close(self) -> None:
        for pid in list(self.served):
            await self._remove(pid)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "vms.json").unlink()
