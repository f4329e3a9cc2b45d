"""One libvirt domain's stats, read from libvirt at most once per ``max_age`` seconds.

Each read of libvirt's vCPU group makes QEMU 7.x kick every vCPU (QEMU opens each vCPU's
stats fd on the vCPU's own thread), so however many clients read a domain, libvirt is read
once per ``max_age``: a read younger than that is shared, and requests that come while a
read is under way wait for that read instead of starting another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from vmstats.kvm.probe import KernelLayouts
from vmstats.libvirt.host import Domain, LibvirtHost
from vmstats.libvirt.values import LibvirtStatsFile, domain_stats

#: Seconds a libvirt read is shared by every reader of the domain.
DEFAULT_MAX_AGE = 1.0


class LibvirtDomain:
    """The stats files of one domain that libvirt feeds: its VM's, and its vCPUs' when
    ``vcpus`` (its QEMU keeps no vCPU stats fds).  ``vcpus_changed`` is told the vCPU
    numbers when the set of vCPUs libvirt lists changes (a hot-plug)."""

    def __init__(
        self,
        host: LibvirtHost,
        domain: Domain,
        layouts: KernelLayouts,
        *,
        vcpus: bool,
        max_age: float = DEFAULT_MAX_AGE,
        vcpus_changed: Callable[[dict[int, LibvirtStatsFile]], None] | None = None,
    ) -> None:
        self.host = host
        self.domain = domain
        self.layouts = layouts
        self.reads_vcpus = vcpus
        self.max_age = max_age
        self.vm = LibvirtStatsFile(layouts.vm, f"libvirt-{domain.name}")
        self.vcpus: dict[int, LibvirtStatsFile] = {}
        self._vcpus_changed = vcpus_changed
        self._taken = -float("inf")
        self._pending: asyncio.Future[None] | None = None
        self.reads = 0  # libvirt reads made (each one kicks every vCPU when ``vcpus``)

    def fresh(self) -> Awaitable[None] | None:
        """None when the values are fresh enough; else something to await until they are
        (the read already under way, if any)."""
        if time.monotonic() - self._taken < self.max_age:
            return None
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
            self._pending.add_done_callback(self._done)
        return asyncio.shield(self._pending)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._pending = None
        if not future.cancelled():
            future.exception()  # retrieved: each waiter has its own copy raised

    async def read(self) -> None:
        """Read now (a first read at start, to know the vCPUs)."""
        pending = self.fresh()
        if pending is not None:
            await pending

    def _vcpu_file(self, number: int) -> LibvirtStatsFile:
        return LibvirtStatsFile(self.layouts.vcpu, f"libvirt-{self.domain.name}/vcpu-{number}")

    async def _read(self) -> None:
        params = await self.host.stats(self.domain, self.reads_vcpus)
        self.reads += 1
        self._taken = time.monotonic()
        stats = domain_stats(params)
        self.vm.update(stats.vm)
        if not self.reads_vcpus:
            return
        numbers = sorted(stats.vcpus)
        if numbers != list(self.vcpus):
            self.vcpus = {n: self.vcpus.get(n) or self._vcpu_file(n) for n in numbers}
            if self._vcpus_changed is not None:
                self._vcpus_changed(self.vcpus)
        for number, file in self.vcpus.items():
            file.update(stats.vcpus[number])
