"""One VM being served: its copied stats fds (the provider), its monitor and QMP server,
its socket, and how it is described in ``vms.json``, ``vmstats list`` and ``--once``.
The daemon (:mod:`.daemon`) makes and removes them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmstats.errors import AttachError
from vmstats.kvm.attach import (
    AttachedVm,
    attach,
    cpu_index_of_threads,
    creator_thread,
    still_held,
    thread_count,
)
from vmstats.kvm.binstats import StatsFile, StatsSource
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.libvirt.domain import LibvirtDomain
from vmstats.qmp.machine import CpuInfoFast, pc_props, pc_vcpu_path
from vmstats.qmp.server import QMPServer
from vmstats.serve.access import VmIdentity, group_names
from vmstats.serve.discover import ProbedQemu
from vmstats.serve.forward import HostMonitor, QemuSocket
from vmstats.serve.reader import MonitorReader
from vmstats.stats.model import StatsTarget
from vmstats.trace.provider import TracepointsProvider, VcpuThread

log = logging.getLogger(__name__)


def describe(name: str, pid: int, vcpus: int, local: Collection[StatsTarget],
             qmp: Path | None, socket: Path, libvirt: LibvirtDomain | None = None,
             uid: int | None = None, owner: str = "",
             groups: Collection[str] = ()) -> dict[str, object]:  # fmt: skip
    """A served VM as ``vms.json``, ``vmstats list`` and ``serve --once`` show it."""
    if libvirt is not None:
        source = "libvirt (vm, vcpu)" if libvirt.reads_vcpus else "fds (vcpu) + libvirt (vm)"
    elif not local:
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
    if libvirt is not None:
        row["uuid"] = libvirt.domain.uuid
    if uid is not None:
        row["owner"] = owner
        row["uid"] = uid
    if groups:
        row["groups"] = list(groups)
    return row


#: How long after it is served a VMM that makes every vCPU on one thread may take to name
#: its vCPU threads ``CPU N/KVM`` (our demo names them as it starts them, just after).
NAMING_GRACE = 10.0


def _apart(threads: Collection[VcpuThread]) -> bool:
    """Is each vCPU on a thread of its own, known?"""
    tids = [t.tid for t in threads]
    return len(set(tids)) == len(tids) and all(tid > 0 for tid in tids)


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
    libvirt: LibvirtDomain | None = None  # a libvirt domain's stats that libvirt gives
    sources: dict[StatsFile, int] = field(default_factory=dict)  # copy -> the VMM's fd
    uid: int | None = None  # the VMM's (effective) user
    owner: str = ""  # that user's name
    socket_owner: int | None = None  # the ordinary user its socket (and list) was given to
    tracepoints: TracepointsProvider | None = None  # exit reasons, where they are counted
    groups: frozenset[int] = frozenset()  # more groups that may read it (allow rules)
    group_names: tuple[str, ...] = ()  # theirs, looked up when they were set
    _threads: int = 0  # the VMM's thread count when last looked at for hot-plugged vCPUs
    _looked: float = -float("inf")
    #: until when its vCPU threads may still be getting their names (see count_vcpus)
    _naming_until: float = field(default_factory=lambda: time.monotonic() + NAMING_GRACE)
    awaiting_names: bool = False  # count_vcpus is to be tried again at the next scans

    def count_vcpus(self, known: Collection[int] = ()) -> None:
        """Exit reasons counted on the threads of the vCPUs served now (those plugged
        since too; threads gone let go).  A vCPU's thread is the one its QEMU or its
        stats fd names (QEMU makes each vCPU on its own thread); where those are not
        apart (a VMM that makes every vCPU on one thread), the one named ``CPU N/KVM``,
        once every vCPU has one: such a VMM names its threads after it made the vCPUs,
        and a vCPU counted on the thread that made it would count nothing, for good.
        Until :data:`NAMING_GRACE` has passed, :attr:`awaiting_names` asks the daemon to
        try again; where no thread tells them apart then, none is counted.  ``known``:
        threads of the VMM as its fds were just taken (not listed again for them)."""
        if self.tracepoints is None:
            return
        self.awaiting_names = False
        cpus = self.monitor.machine.cpus
        threads = [VcpuThread(cpu.qom_path, cpu.thread_id) for cpu in cpus]
        if not _apart(threads):
            named = {index: tid for tid, index in cpu_index_of_threads(self.pid).items()}
            known = named.values()  # a thread each: one name, one index
            threads = [VcpuThread(cpu.qom_path, named[cpu.cpu_index]) for cpu in cpus
                       if cpu.cpu_index in named]  # fmt: skip
            if len(threads) < len(cpus):  # none counted, rather than one on another thread
                threads = []
                self.awaiting_names = time.monotonic() < self._naming_until
                if not self.awaiting_names:
                    log.info("%s: its vCPUs' threads cannot be told apart: exit reasons "
                             "are not counted", self.name)  # fmt: skip
        self.tracepoints.set_vcpus(threads, known)

    def close_stats(self) -> None:
        """Close every fd its providers hold: reads fail from now on (the VM is gone)."""
        self.provider.close()
        if self.tracepoints is not None:
            self.tracepoints.close()

    def metrics_reader(self) -> MonitorReader:
        """What a scrape reads this VM with: its own monitor, as its clients see it."""
        if self.reader is None:
            self.reader = MonitorReader(self.name, self.monitor, self.metrics_info)
        return self.reader

    def metrics_info(self) -> dict[str, str]:
        row = self.describe()
        info = {"pid": str(self.pid), "source": str(row["source"]),
                "qemu_version": self.qemu_version}  # fmt: skip
        for key in ("uuid", "owner"):
            if key in row:
                info[key] = str(row[key])
        return info

    def describe(self) -> dict[str, object]:
        vcpus = len(self.vcpus) or len(self.monitor.machine.cpus)
        return describe(self.name, self.pid, vcpus, self.monitor.local, self.qmp, self.socket,
                        self.libvirt, self.uid, self.owner, self.group_names)  # fmt: skip

    def set_groups(self, groups: frozenset[int]) -> None:
        """The groups ``allow`` rules add; their names looked up now, not at every scan
        and scrape that describes the VM."""
        self.groups = groups
        self.group_names = tuple(group_names(groups))

    def identity(self) -> VmIdentity:
        """What an ``allow`` rule selects it by."""
        domain = None
        if self.libvirt is not None:
            domain = (self.libvirt.domain.name, self.libvirt.domain.uuid)
        return VmIdentity(self.name, self.owner, domain)

    def use_libvirt(self, domain: LibvirtDomain) -> None:
        """A libvirt domain: its VM-level stats (and its vCPUs' where it keeps no fds)
        are libvirt's, read when a client asks and shared with every other client."""
        self.libvirt = domain
        self.provider.vm = domain.vm
        self.monitor.local.add(StatsTarget.VM)

    def fresh(self, target: StatsTarget) -> Awaitable[None] | None:
        """Before ``target`` is read: vCPUs plugged since are taken (nothing tells us of
        a hot-plug, not even libvirt), and libvirt's values are read if they are old."""
        if target == StatsTarget.VCPU and self.sources:
            self._notice_plugged_vcpus()
        return None if self.libvirt is None else self.libvirt.fresh(target)

    def _notice_plugged_vcpus(self) -> None:
        """A hot-plugged vCPU is a new thread of the VMM: when the VMM's thread count
        changed (one small read), look for new vCPU stats fds, at most once a second
        (QEMU's I/O worker threads come and go too)."""
        now = time.monotonic()
        if now - self._looked < 1.0:
            return
        self._looked = now
        threads = thread_count(self.pid)
        if threads != self._threads:
            self._threads = threads
            self.take_plugged_vcpus()

    def take_plugged_vcpus(self) -> list[int]:
        """Serve the vCPU stats fds the VMM holds that are not served yet; their CPU
        indexes."""
        try:
            attached = attach(self.pid, skip_vm=True, skip_vcpus=self.vcpu_ids)
        except AttachError:
            return []  # exiting: its pidfd says so
        attached.release_pidfd()
        if not attached.vcpus:
            return []
        self.add_vcpus(attached)
        log.info("%s: vCPUs %s plugged", self.name, sorted(attached.vcpus))
        return sorted(attached.vcpus)

    def libvirt_vcpus(self, files: Mapping[int, StatsSource]) -> None:
        """libvirt lists these vCPUs now (at start, or after a hot-plug): served by CPU
        index, under the QOM paths of QEMU's pc machine, with QEMU's vCPU threads."""
        threads = {index: tid for tid, index in cpu_index_of_threads(self.pid).items()}
        self.vcpus = {i: VcpuStatsFile(pc_vcpu_path(i), f) for i, f in sorted(files.items())}
        self.provider.set_vcpus(self.vcpus.values())
        self.monitor.serve_vcpus([CpuInfoFast(i, pc_vcpu_path(i), threads.get(i, 0), pc_props(i))
                                  for i in self.vcpus])  # fmt: skip
        self.count_vcpus()

    def add_vcpus(self, attached: AttachedVm) -> None:
        """Serve vCPUs (at start, or plugged since): their files, paths and threads."""
        known = {cpu.cpu_index: cpu for cpu in self.monitor.machine.cpus}
        for index, file in attached.vcpus.items():
            path = known[index].qom_path if index in known else pc_vcpu_path(index)
            self.vcpus[index] = VcpuStatsFile(path, file)
            if index not in known:
                known[index] = CpuInfoFast(index, path, creator_thread(file), pc_props(index))
        self.vcpu_ids |= attached.vcpu_ids
        self.sources.update(attached.sources)
        self.vcpus = dict(sorted(self.vcpus.items()))
        self.provider.set_vcpus(self.vcpus.values())
        if self.vcpus:
            self.monitor.serve_vcpus([known[i] for i in sorted(known)])
        self.count_vcpus(attached.threads.keys() - attached.strangers)

    def fds_replaced(self) -> bool:
        """Has the VMM closed a stats fd we copied, or put another at its number?"""
        return not still_held(self.pid, ((fd, copy.fd) for copy, fd in self.sources.items()))

    def replace_fds(self, attached: AttachedVm) -> None:
        """Serve fresh copies of the VMM's stats fds instead of the ones it replaced
        (which are closed: a held stats fd pins its VM's kernel memory)."""
        old = list(self.sources)
        self.sources, self.vcpus, self.vcpu_ids = {}, {}, set()
        if self.libvirt is None:
            self.provider.vm = attached.vm
        elif attached.vm is not None:
            attached.sources.pop(attached.vm, None)
            attached.vm.close()
        self.add_vcpus(attached)
        for file in old:
            file.close()

    def use_socket(self, source: ProbedQemu, timeout: float) -> None:
        """The VM's QEMU socket: VM-level stats, QEMU's name and QOM paths from it."""
        self.qmp = source.path
        self.qemu_version = source.version
        self.monitor.use_qemu(QemuSocket(source.path, timeout), source.name, source.cpus)
        if source.cpus:
            paths = {cpu.cpu_index: cpu.qom_path for cpu in source.cpus}
            self.vcpus = {i: VcpuStatsFile(paths.get(i, v.qom_path), v.file)
                          for i, v in self.vcpus.items()}  # fmt: skip
            self.provider.set_vcpus(self.vcpus.values())
        self.count_vcpus()
