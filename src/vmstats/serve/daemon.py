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

With ``libvirt`` (a URI), libvirt's running domains are served too, named by their domain
names, followed through a read-only connection: a lifecycle event makes the daemon look
at once, not at the next scan (:mod:`vmstats.serve.domains`).  Their VM-level stats come
from libvirt's VM group (it kicks nothing), their vCPU stats from the fds where QEMU keeps
them, else from libvirt's vCPU group; the schemas from this kernel's own descriptors.

Without a socket to ask, vCPUs are numbered by QEMU's CPU index and get the QOM paths
QEMU's pc machine gives them (``/machine/unattached/device[0]``, ``[2]``, ``[3]``...): the
documented scheme.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import glob
import logging
import os
import resource
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from vmstats import caps
from vmstats.collect import collections_held, keep_all, let_go
from vmstats.errors import AttachError, ClientError, SocketInUse, VmstatsError, os_reason
from vmstats.kvm.attach import AttachedVm, FdListing, attach
from vmstats.kvm.opens import KvmOpens
from vmstats.kvm.provider import KvmStatsProvider
from vmstats.kvm.scan import ProcessScanner, ScanResult
from vmstats.kvm.vmm import VmmProcess
from vmstats.libvirt.domain import DEFAULT_MAX_AGE
from vmstats.libvirt.host import Domain
from vmstats.limits import RateLimitedLog, ServerLimits, fd_budget, open_files_limit
from vmstats.qmp.machine import (
    Machine,
)
from vmstats.qmp.server import QMPServer
from vmstats.reader.reading import Reader
from vmstats.serve.access import Access, AllowRule, peer_of, regrant
from vmstats.serve.discover import (
    NAME_MAX,
    ProbedQemu,
    cmdline,
    forget_accounts,
    ordinary_user,
    probe,
    process_uid,
    qemu_name,
    qmp_socket_paths,
    user_name,
    vm_name,
    vmms,
)
from vmstats.serve.domains import Domains
from vmstats.serve.forward import DEFAULT_QMP_TIMEOUT, HostMonitor
from vmstats.serve.rundir import RunDir
from vmstats.serve.served import ServedVm
from vmstats.slices import TimeSlices
from vmstats.stats.model import StatsTarget
from vmstats.stats.registry import StatsRegistry
from vmstats.trace.provider import TracepointsProvider, Tracing

log = logging.getLogger(__name__)

#: Seconds after an open of ``/dev/kvm`` at which the daemon scans: QEMU makes its vCPUs
#: (and their stats fds) within a fraction of a second of it; a slow VMM later.
OPEN_SCANS = (0.25, 1.0, 3.0)
#: The least time between two scans that opens ask for (whoever may open ``/dev/kvm``
#: can open it in a loop: at most 2 scans a second, on top of the periodic ones).
OPEN_GAP = 0.5


#: A scan that serves this many new VMs (a host's first, many starting together) keeps
#: what it made out of the collector's walks (:func:`keep_all`); fewer are not worth the
#: full collection that keeping costs once a VM was removed (churn: one a second).
KEEP_FROM = 16

#: The fds a VM takes beside its stats fds: its VMM's pidfd, its socket, and a few opened
#: for a moment while it is taken.
FDS_PER_VM = 4
#: Shortages that pass: a VMM that could not be served for one is tried again.
_SHORTAGES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC})


def _may_pass(exc: BaseException) -> bool:
    """Did ``exc`` come of a shortage of this host or process (fds, memory, space), not
    of what the VMM is or does?"""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _SHORTAGES:
            return True
        cause = cause.__cause__
    return False


def _thread_cpu() -> tuple[float, float]:
    """This thread's CPU seconds so far, in Python and in the kernel: a scan's time is
    mostly the kernel's ``/proc`` and socket work, and a wall time well above both says
    the daemon waited for a core.  The kernel splits the two by its clock ticks (4 ms
    here): the split of a scan of a few ms says little."""
    used = resource.getrusage(resource.RUSAGE_THREAD)
    return used.ru_utime, used.ru_stime


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
        allow: Iterable[AllowRule] = (),
        scan_interval: float = 5.0,
        limits: ServerLimits | None = None,
        fds: bool = True,
        qmp: Iterable[str] = (),
        qmp_timeout: float = DEFAULT_QMP_TIMEOUT,
        libvirt: str | None = None,
        libvirt_max_age: float = DEFAULT_MAX_AGE,
        dry_run: bool = False,
    ) -> None:
        self.dry_run = dry_run
        # exit reasons counted per vCPU, when allowed: opened by the command once the run
        # directory is claimed, with root's privileges
        self.tracing: Tracing | None = None
        self.run_dir = run_dir
        self.group = group
        self.access = Access(os.getegid() if group is None else group, tuple(allow))
        self.scan_interval = scan_interval
        self.limits = limits or ServerLimits()
        self.fds = fds
        self.qmp = list(qmp)
        self.qmp_timeout = qmp_timeout
        self.served: dict[int, ServedVm] = {}
        self._names: set[str] = set()  # theirs: a new VM's name is unique among them
        self.scanner = ProcessScanner()
        self._written: tuple[object, ...] = ()  # what vms.json and the lists say now
        self._sockets: dict[Path, tuple[int, int]] = {}  # QEMU socket -> (inode, pid)
        self._log = RateLimitedLog(log, interval=300.0)
        self._removals: set[asyncio.Task[None]] = set()  # kept until done (asyncio holds weakly)
        self.rundir = RunDir(run_dir, group)
        # a socket's path is at most 107 bytes: RUN_DIR/NAME.qmp must fit
        self.longest_name = max(16, min(NAME_MAX, 107 - len(os.fsencode(run_dir)) - 5))
        self.domains = None if libvirt is None else Domains(libvirt, qmp_timeout,
                                                            libvirt_max_age)  # fmt: skip
        self.opens: KvmOpens | None = None  # opens of /dev/kvm, watched while serving
        self._soon: list[float] = []  # loop times of scans that opens asked for
        self._woken = asyncio.Event()  # an open asked for a scan

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; :class:`SocketInUse` if another daemon holds the run
        directory."""
        self.rundir.claim()
        log.info("serving the VMs of this host in %s (a scan every %g s%s)", self.run_dir,
                 self.scan_interval, "" if self.fds else "; QMP sockets only")  # fmt: skip
        try:
            if self.fds and not self.dry_run:
                self._watch_opens()
            if self.domains is not None:
                await self.domains.start()
            while not stop.is_set():
                await self.scan()
                await self._wait(stop)
        finally:
            await self.close()

    def _watch_opens(self) -> None:
        """Scan soon after a process opens ``/dev/kvm`` (a VMM starting), not only every
        ``scan_interval``; without the watch, the interval alone."""
        try:
            self.opens = KvmOpens()
        except OSError as exc:
            log.info("VMs are looked for every %g s only: %s", self.scan_interval, exc)
            return
        asyncio.get_running_loop().add_reader(self.opens.fd, self._opened)

    def _opened(self) -> None:
        """``/dev/kvm`` was opened: scans at :data:`OPEN_SCANS` after it (a VMM makes its
        vCPUs moments after, a slow one later), none closer than :data:`OPEN_GAP` to
        another (opening it in a loop makes at most one scan per gap).  They are all
        made, though the first may serve the VM: VMs that start together open it
        together, and one served tells nothing of the others."""
        assert self.opens is not None
        if not self.opens.drain():
            return
        now = asyncio.get_running_loop().time()
        for delay in OPEN_SCANS:
            when = now + delay
            if all(abs(when - other) >= OPEN_GAP for other in self._soon):
                self._soon.append(when)
        self._soon.sort()
        self._woken.set()

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the next scan: the interval's end, or a scan an open of ``/dev/kvm``
        asked for; or ``stop``.  libvirt's domains are looked at as soon as libvirt says
        they changed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.scan_interval
        while not stop.is_set():
            now = loop.time()
            if self._soon and self._soon[0] <= now:
                self._soon = [when for when in self._soon if when > now]
                return  # a VMM is starting
            left = min([deadline, *self._soon[:1]]) - now
            if left <= 0:
                return
            if self.domains is None:
                self._woken.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._woken)]
                try:
                    await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
                continue
            if await self.domains.changed(stop, left):
                await self._serve_domains()
                self._write_state()

    async def scan(self) -> None:
        """Serve the VMs that appeared since the last scan, and their new vCPUs."""
        started, cpu = time.perf_counter(), _thread_cpu()
        forget_accounts()
        await self._serve_domains()  # first: a libvirt domain is named by libvirt
        if self.fds:
            before = set(self.served)
            # a burst of objects that stay: no collection walks them meanwhile (what the
            # other clients' answers between two VMs leave is collected after it too)
            with collections_held():
                found = self.scanner.scan()
                how = " in one pass" if found.by_iterator else ""
                log.debug("scan: %d processes looked at, %d listed%s", found.processes,
                          len(found.changed), how)  # fmt: skip
                self._report(found)
                # only those listed now: the others were tried when they last changed
                listed = self._within_fds(found.listings)
                slices = TimeSlices()  # the other VMs' clients are answered meanwhile
                for pid, attached in vmms(self.served, self._not_served, listed):
                    await self._try_serve(pid, attached, None)
                    await slices.pause()
                if len(self.served.keys() - before) >= KEEP_FROM:
                    keep_all()  # served VMs stay while they run: no collection walks them
            for served in [vm for pid, vm in self.served.items() if pid in before]:
                if served.awaiting_names:  # a VMM naming its vCPU threads after making them
                    served.count_vcpus()
                if served.sources and served.fds_replaced():
                    self._reattach(served)
                    continue
                held = {link.vcpu_id for link in found.vmms.get(served.pid, ())}
                # served from its fds, even none of its vCPUs yet (a VMM caught between
                # making its VM and its vCPUs); not a QEMU 7.x served through its socket,
                # whose vCPU stats fds live only while it answers a query
                if (served.vcpus or served.sources) and held - {None} - served.vcpu_ids:
                    await self._hot_plug(served)
        for source in await self._new_sources():
            vm = self.served.get(source.pid)
            if vm is not None:
                vm.use_socket(source, self.qmp_timeout)
                log.info("%s: VM-level stats, name and QOM paths from %s", vm.name, source.path)
            else:
                await self._try_serve(source.pid, None, source)
        self._write_state()
        user, kernel = (now - then for now, then in zip(_thread_cpu(), cpu, strict=True))
        log.debug("scan: %.1f ms (CPU %.1f ms, %.1f of it in the kernel), %d VMs served",
                  (time.perf_counter() - started) * 1000, (user + kernel) * 1000,
                  kernel * 1000, len(self.served))  # fmt: skip

    async def _serve_domains(self) -> None:
        """Serve libvirt's running domains not served yet; those served from their fds
        already get their libvirt side."""
        if self.domains is None:
            return
        for pid, domain in await self.domains.unserved(self.served):
            served = self.served.get(pid)
            try:
                if served is not None:
                    await self.domains.use(served, domain, fds=bool(served.vcpus))
                    self._grant(served)  # rules may select it by its domain now
                    log.info("%s: a libvirt domain (UUID %s): VM-level stats from libvirt",
                             served.name, domain.uuid)  # fmt: skip
                    continue
                attached = self._attach_quietly(pid)
                await self._serve(pid, attached, None, domain)
            except (VmstatsError, OSError) as exc:
                self._log.warning(f"uuid:{domain.uuid}", "libvirt domain %s not served: %s",
                                  domain.name, exc)  # fmt: skip

    def _attach_quietly(self, pid: int) -> AttachedVm | None:
        """The stats fds of ``pid`` where it keeps some and we may copy them, else None."""
        if not self.fds:
            return None
        try:
            attached = attach(pid)
        except AttachError:
            return None
        if not attached.vcpus and attached.vm is None:
            attached.close()
            return None
        return attached

    def _report(self, found: ScanResult) -> None:
        """Say (once in a while) what a scan left out."""
        if found.deferred:
            self._log.warning("deferred", "%d processes changed more fds than a scan reads "
                              "(%d): they are looked into at the next scans", found.deferred,
                              self.scanner.budget)  # fmt: skip
        for pid, fds in found.too_big.items():
            self._log.warning(f"too-big:{pid}", "process %d holds %d fds, more than a scan "
                              "reads (%d): not looked into for VMs", pid, fds,
                              self.scanner.budget)  # fmt: skip

    def _within_fds(self, listings: dict[int, FdListing]) -> dict[int, FdListing]:
        """The new VMMs listed that this process has fds left for: a copy of each stats
        fd, a pidfd and a socket each, and a few for a moment.  The others are listed
        again at the next scan (fds free up as VMs go, or the limit is raised), and said
        once in a while: a VM taken with too few fds would fail half way."""
        new = {pid: listed for pid, listed in listings.items() if pid not in self.served}
        if not new:  # a steady scan: no count of our fds (a listing of them before 6.2)
            return new
        left, within, short = fd_budget(), {}, 0
        for pid, listed in new.items():
            need = len(listed.links) + FDS_PER_VM
            if need > left:
                self.scanner.forget(pid)
                short += 1
                continue
            left -= need
            within[pid] = listed
        if short:
            self._log.warning("fds", "%d VMs not served for now: this process may open %d "
                              "files (RLIMIT_NOFILE) and has too few left for them; they "
                              "are tried again at each scan (raise the limit: "
                              "LimitNOFILE= in its unit, or ulimit -n)", short,
                              open_files_limit())  # fmt: skip
        return within

    def _not_served(self, pid: int, exc: AttachError) -> None:
        self._log.warning(f"pid:{pid}", "not served: %s", exc)
        if _may_pass(exc):
            self.scanner.forget(pid)  # tried again at the next scan, not when it changes

    async def _new_sources(self) -> list[ProbedQemu]:
        """QEMU sockets not probed yet (or replaced since), probed; the ones that fail are
        tried again at the next scan."""
        found = []
        for pattern in self.qmp:
            if not glob.has_magic(pattern) and not os.path.exists(pattern):
                self._log.warning(pattern, "QMP source %s: no such socket (yet)", pattern)
        links: list[Path] = []
        paths = qmp_socket_paths(self.qmp, links)
        for link in links:
            self._log.warning(f"link:{link}", "QMP source %s is a symbolic link that "
                              "a glob matched: not followed (give the socket's path)",
                              link)  # fmt: skip
        for path in paths:
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

    def _reattach(self, vm: ServedVm) -> None:
        """The VMM replaced stats fds we hold (a VM recreated, as a confidential guest's
        reset does): copy its current ones instead."""
        try:
            attached = attach(vm.pid)
        except AttachError:
            return  # exiting: its pidfd says so
        attached.release_pidfd()
        vm.replace_fds(attached)
        log.info("%s: its VMM replaced its stats fds; serving its current ones (%d vCPUs)",
                 vm.name, len(vm.vcpus))  # fmt: skip

    async def _hot_plug(self, vm: ServedVm) -> None:
        """Take the vCPU stats fds a VMM holds that ``vm`` does not serve yet."""
        if vm.take_plugged_vcpus() and vm.qmp is not None:  # QEMU tells their QOM paths
            with contextlib.suppress(ClientError):
                vm.use_socket(await probe(vm.qmp, self.qmp_timeout), self.qmp_timeout)

    async def _try_serve(self, pid: int, attached: AttachedVm | None,
                         source: ProbedQemu | None) -> None:  # fmt: skip
        try:
            await self._serve(pid, attached, source)
        except (VmstatsError, OSError) as exc:
            if attached is not None:
                attached.close()
                if _may_pass(exc):
                    self.scanner.forget(pid)
            log.warning("cannot serve the VM of process %d: %s", pid, exc)

    async def _serve(self, pid: int, attached: AttachedVm | None, source: ProbedQemu | None,
                     domain: Domain | None = None) -> None:  # fmt: skip
        # what it calls itself: its QEMU's answer, else its -name (None: its comm and pid)
        given = source.name if source is not None else qemu_name(cmdline(pid))
        # who runs it, looked up once (unless its listing read it): the name, scans and
        # scrapes say it
        uid = attached.uid if attached is not None else None
        if uid is None:
            uid = process_uid(pid)
        name = vm_name(pid, self._names, domain.name if domain is not None else given,
                       self.longest_name, uid)  # fmt: skip
        # the provider watches the VMM by the pidfd its fds were copied through
        vmm = VmmProcess(pid, attached.take_pidfd() if attached is not None else None)
        provider = KvmStatsProvider(attached.vm if attached else None, [], vmm)
        registry = StatsRegistry()
        registry.add_stats_callbacks(provider)
        tracepoints = None
        if self.tracing is not None and not self.dry_run:
            tracepoints = TracepointsProvider(self.tracing, pid=pid)
            registry.add_stats_callbacks(tracepoints)
        local = {StatsTarget.VM} if provider.vm is not None else set()
        monitor = HostMonitor(registry, Machine(name=given), local=local)
        socket = self.run_dir / f"{name}.qmp"
        vm = ServedVm(name, pid, provider, monitor, QMPServer(monitor, self.limits), socket)
        vm.tracepoints = tracepoints
        vm.uid = uid
        if uid is not None:
            vm.owner = user_name(uid)
        vm.socket_owner = self._socket_owner(vm)
        vm.server.admit = functools.partial(self._admit, vm)
        monitor.refresh = vm.fresh
        if attached is not None:
            vm.add_vcpus(attached)
        if source is not None:
            vm.use_socket(source, self.qmp_timeout)
        if domain is not None:
            assert self.domains is not None
            try:
                await self.domains.use(vm, domain, fds=bool(vm.vcpus))
            except BaseException:
                vm.close_stats()
                raise
        vm.set_groups(self.access.groups_for(vm.identity()))
        if self.dry_run:
            self._add(vm)
            return
        try:
            await vm.server.start_unix(socket, mode=0o660, group=self.group,
                                       owner=vm.socket_owner, groups=vm.groups)  # fmt: skip
        except (SocketInUse, OSError):
            await vm.server.close()
            vm.close_stats()
            raise
        self._add(vm)
        assert provider.vmm is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(provider.vmm.pidfd, lambda: self._start_removal(pid))
        log.info("serving %s (process %d, %s) at %s", name, pid, vm.describe()["source"], socket)

    def _add(self, vm: ServedVm) -> None:
        self.served[vm.pid] = vm
        self._names.add(vm.name)

    def _socket_owner(self, vm: ServedVm) -> int | None:
        """The ordinary user whose VM this is: its socket is theirs (and the group's).
        Giving a file away takes CAP_CHOWN; without it the VM is the group's only."""
        owner = ordinary_user(vm.uid)
        if owner is not None and not caps.has(caps.CAP_CHOWN):
            self._log.warning(f"owner:{owner}", "%s is served to the group only: giving "
                              "its socket to its owner needs CAP_CHOWN", vm.name)  # fmt: skip
            return None
        return owner

    def _admit(self, vm: ServedVm, conn: socket.socket) -> str | None:
        """The second guard behind the socket's modes: is the peer (its credentials as
        the kernel took them at connect) the VM's owner, root, or in one of its groups?"""
        try:
            peer = peer_of(conn)
        except OSError as exc:
            return f"its credentials cannot be read ({os_reason(exc)})"
        if self.access.admits(peer, vm.socket_owner, vm.groups):
            return None
        return f"uid {peer.uid} (process {peer.pid}) is not its owner and in none of its groups"

    def set_allow(self, rules: Iterable[AllowRule]) -> None:
        """New ``allow`` rules (SIGHUP): each VM's sockets and lists follow at once."""
        self.access = Access(self.access.admin_gid, tuple(rules))
        for vm in self.served.values():
            self._grant(vm)
        self._write_state()

    def _grant(self, vm: ServedVm) -> None:
        """Let the groups the rules select ``vm`` for read it, and no others."""
        groups = self.access.groups_for(vm.identity())
        if groups == vm.groups:
            return
        if not self.dry_run:
            try:
                regrant(vm.socket, 0o660, groups)
            except OSError as exc:
                self._log.warning(f"acl:{vm.name}", "%s: its groups cannot be changed (%s); "
                                  "its socket lets in the old ones only", vm.name,
                                  os_reason(exc))  # fmt: skip
                groups &= vm.groups  # the accept check never lets in more than the modes
        vm.set_groups(groups)
        log.info("%s: readable by the groups %s too", vm.name,
                 ", ".join(vm.group_names) or "(none)")  # fmt: skip

    def readers(self) -> list[Reader]:
        """The VMs a Prometheus scrape reads (``vmstats serve --metrics``)."""
        return [vm.metrics_reader() for vm in self.served.values()]

    def _start_removal(self, pid: int) -> None:
        """The VMM's pidfd is readable (it exited): remove it, in a task kept until done."""
        task = asyncio.get_running_loop().create_task(self._remove(pid))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, pid: int, why: str = "exited", write: bool = True) -> None:
        """The VMM exited (or the daemon stops): close its fds at once, its clients, its
        socket."""
        vm = self.served.pop(pid, None)
        if vm is None:
            return
        self._names.discard(vm.name)
        assert vm.provider.vmm is not None
        if vm.provider.vmm.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(vm.provider.vmm.pidfd)
        closing = asyncio.ensure_future(vm.server.close())
        vm.close_stats()  # reads from now on fail: the VM is gone
        await closing
        let_go()  # its objects (kept since it was served) are garbage now
        if write:
            self._write_state()
        log.info("%s (process %d) %s: no longer served", vm.name, pid, why)

    def _write_state(self) -> None:
        if self.dry_run:
            return
        rows: list[dict[str, object]] = []
        owners: dict[int, list[dict[str, object]]] = {}
        groups: dict[int, list[dict[str, object]]] = {}
        for vm in self.served.values():
            row = vm.describe()
            rows.append(row)
            if vm.socket_owner is not None:
                owners.setdefault(vm.socket_owner, []).append(row)
            for gid in vm.groups:
                groups.setdefault(gid, []).append(row)
        if (rows, owners, groups) == self._written:
            return  # a scan that changed nothing rewrites nothing
        self.rundir.write_state(rows, owners, groups)
        self._written = (rows, owners, groups)

    async def close(self) -> None:
        for pid in list(self.served):
            await self._remove(pid, "still runs, but vmstats serve stops", write=False)
        self.scanner.close()
        if self.opens is not None:
            asyncio.get_running_loop().remove_reader(self.opens.fd)
            self.opens.close()
            self.opens = None
        if self.tracing is not None:
            self.tracing.close()  # its programs detached: nothing counted any more
            self.tracing = None
        if self.domains is not None:
            await self.domains.close()
        self.rundir.release()
