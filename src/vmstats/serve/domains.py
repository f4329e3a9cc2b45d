"""libvirt's running domains, for the host daemon: which are not served yet, and what
serves their stats once they are.

A domain's QEMU is the one process whose command line gives the domain's UUID (libvirt
passes ``-uuid`` to every QEMU it starts); two processes claiming one UUID are refused,
not guessed between.  The schemas come from this kernel's descriptors, read once from a
throwaway VM (:mod:`vmstats.kvm.probe`): libvirt gives values only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from vmstats.errors import LibvirtError
from vmstats.kvm.probe import KernelLayouts, kernel_layouts
from vmstats.libvirt.domain import LibvirtDomain
from vmstats.libvirt.host import Domain, LibvirtHost
from vmstats.limits import RateLimitedLog
from vmstats.serve.discover import processes_with_uuid
from vmstats.serve.served import ServedVm

log = logging.getLogger(__name__)


class Domains:
    """A read-only libvirt connection at ``uri`` and what the daemon makes of it."""

    def __init__(self, uri: str, timeout: float, max_age: float) -> None:
        self.host = LibvirtHost(uri, self._changed, timeout)
        self.max_age = max_age
        self._wake: asyncio.Event | None = None
        self._layouts: KernelLayouts | None = None
        self._log = RateLimitedLog(log, interval=300.0)

    async def start(self, *, wait: bool = True) -> None:
        """Connect (:meth:`LibvirtHost.start`)."""
        self._wake = asyncio.Event()
        await self.host.start(wait=wait)

    def _changed(self, why: str) -> None:
        log.debug("libvirt: %s", why)
        if self._wake is not None:
            self._wake.set()

    async def changed(self, stop: asyncio.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` for libvirt to say its domains changed (True), or for
        ``stop`` (False)."""
        assert self._wake is not None
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if stop.is_set() or not self._wake.is_set():
            return False
        self._wake.clear()
        return True

    async def unserved(self, served: Mapping[int, ServedVm]) -> list[tuple[int, Domain]]:
        """The running domains that are not served as domains yet, with their QEMU's pid.
        Served ones get libvirt's current handle (a reconnection makes new ones)."""
        if not self.host.connected:
            return []
        try:
            domains = await self.host.domains()
        except LibvirtError as exc:
            self._log.warning("domains", "cannot list libvirt's domains: %s", exc)
            return []
        by_uuid = {vm.libvirt.domain.uuid: vm.libvirt for vm in served.values() if vm.libvirt}
        out = []
        for domain in domains:
            known = by_uuid.get(domain.uuid)
            if known is not None:
                known.domain = domain
                continue
            pids = processes_with_uuid(domain.uuid)
            if len(pids) == 1:
                out.append((pids[0], domain))
            else:
                why = ("its QEMU process is not found" if not pids else
                       f"processes {', '.join(map(str, pids))} all claim its UUID")  # fmt: skip
                self._log.warning(f"uuid:{domain.uuid}", "libvirt domain %s not served: %s",
                                  domain.name, why)  # fmt: skip
        return out

    def layouts(self) -> KernelLayouts:
        """This kernel's stats layouts (read once; KvmUnavailable if we cannot)."""
        if self._layouts is None:
            self._layouts = kernel_layouts()
        return self._layouts

    async def use(self, vm: ServedVm, domain: Domain, *, fds: bool) -> None:
        """Serve ``domain``'s libvirt side in ``vm``: its VM-level stats, and its vCPU
        stats unless its fds give them (``fds``).  Read once now, to know its vCPUs."""
        source = LibvirtDomain(self.host, domain, self.layouts(), vcpus=not fds,
                               max_age=self.max_age, vcpus_changed=vm.libvirt_vcpus)  # fmt: skip
        await source.read()
        vm.use_libvirt(source)

    async def close(self) -> None:
        with contextlib.suppress(LibvirtError):
            await self.host.close()
