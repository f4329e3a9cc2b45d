"""One libvirt domain's stats, read from libvirt at most once per ``max_age`` seconds.

Each read of libvirt's vCPU group makes QEMU 7.x kick every vCPU (QEMU opens each vCPU's
stats fd on the vCPU's own thread), so however many clients read a domain, libvirt is read
once per ``max_age``: a read younger than that is shared, and requests that come while a
read is under way wait for that read instead of starting another.  The VM group is read
apart from the vCPU group: a VM-level query kicks nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from vmstats.kvm.probe import KernelLayouts
from vmstats.libvirt.host import Domain, LibvirtHost
from vmstats.libvirt.values import LibvirtStatsFile, domain_stats
from vmstats.stats.model import StatsTarget

#: Seconds a libvirt read is shared by every reader of the domain.
DEFAULT_MAX_AGE = 1.0


class SharedRead:
    """A read made at most once per ``max_age`` seconds: a younger one is shared, and
    whoever asks while one is under way waits for it instead of starting another."""

    def __init__(self, read: Callable[[], Awaitable[None]], max_age: float) -> None:
        self._read = read
        self.max_age = max_age
        self._taken = -float("inf")
        self._pending: asyncio.Future[None] | None = None

    def fresh(self) -> Awaitable[None] | None:
        """None when the last read is young enough, else what to await."""
        if time.monotonic() - self._taken < self.max_age:
            return None
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._run())
            self._pending.add_done_callback(self._done)
        return asyncio.shield(self._pending)

    async def _run(self) -> None:
        await self._read()
        self._taken = time.monotonic()

    def _done(self, future: asyncio.Future[None]) -> None:
        self._pending = None
        if not future.cancelled():
            future.exception()  # retrieved: each waiter has it raised on its own


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
        self.vm = LibvirtStatsFile(layouts.vm, f"libvirt-{domain.name}")
        self.vcpus: dict[int, LibvirtStatsFile] = {}
        self._vcpus_changed = vcpus_changed
        self._vm_group = SharedRead(self._read_vm, max_age)
        self._vcpu_group = SharedRead(self._read_vcpus, max_age)

    def fresh(self, target: StatsTarget) -> Awaitable[None] | None:
        """None when ``target``'s values are fresh enough; else something to await until
        they are.  VM-level stats are read apart from the vCPUs', so they kick nothing."""
        if target == StatsTarget.VCPU:
            return self._vcpu_group.fresh() if self.reads_vcpus else None
        return self._vm_group.fresh() if target == StatsTarget.VM else None

    async def read(self) -> None:
        """Read everything now (at start, to know the vCPUs)."""
        for target in (StatsTarget.VM, StatsTarget.VCPU):
            pending = self.fresh(target)
            if pending is not None:
                await pending

    def _vcpu_file(self, number: int) -> LibvirtStatsFile:
        return LibvirtStatsFile(self.layouts.vcpu, f"libvirt-{self.domain.name}/vcpu-{number}")

    async def _read_vm(self) -> None:
        self.vm.update(domain_stats(await self.host.stats(self.domain, vcpus=False)).vm)

    async def _read_vcpus(self) -> None:
        stats = domain_stats(await self.host.stats(self.domain, vcpus=True))
        numbers = sorted(stats.vcpus)
        if numbers != list(self.vcpus):
            self.vcpus = {n: self.vcpus.get(n) or self._vcpu_file(n) for n in numbers}
            if self._vcpus_changed is not None:
                self._vcpus_changed(self.vcpus)
        for number, file in self.vcpus.items():
            file.update(stats.vcpus[number])
