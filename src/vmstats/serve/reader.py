"""A VM the host daemon serves, read for ``serve --metrics`` as any reader reads a VM.

The served VM's monitor holds everything: the registry of its copied stats fds, the
machine (name, vCPUs) and which targets it forwards to a QEMU's socket.  What is local is
read without JSON; what the monitor forwards is asked through the monitor, as a client of
its socket would ask, so the exported values are the values QMP gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmstats.errors import ClientError
from vmstats.qmp.monitor import Monitor
from vmstats.reader.reading import Decoded, VmReading, cpu_numbers, cpus_of, schemas_of
from vmstats.reader.sample import Sample, SampleMemo, sample_from_wire, sample_of
from vmstats.stats.model import VM_TARGETS, StatsSchema


class MonitorReader:
    """A served VM, read from its monitor's own state; ``info`` labels it."""

    def __init__(self, name: str, monitor: Monitor, info: Callable[[], dict[str, str]]) -> None:
        self.name = name
        self.monitor = monitor
        self._dispatcher = monitor.dispatcher(lambda **_: None, negotiated=True)
        self._info = info
        self._forwarded_schemas: Decoded[list[StatsSchema]] = Decoded(schemas_of, [])
        self._forwarded_vcpus: Decoded[dict[str, int]] = Decoded(
            lambda raw: cpu_numbers(cpus_of(raw)), {}
        )
        self._schemas: list[StatsSchema] = []  # the registry's, while they stay the same
        self._memo = SampleMemo()

    async def ask(self, command: str, arguments: dict[str, Any] | None) -> bytes:
        """``command`` through the monitor: its return value as QMP would send it."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        response = self._dispatcher.respond(request, wire=True)
        if not isinstance(response, dict):
            response = await response
        if "error" in response:
            raise ClientError(f"{command}: {response['error']['desc']}")
        return str(response["return"]).encode()

    async def _sample(self) -> Sample:
        """Local targets from the registry, forwarded ones over QMP: one sample."""
        forwarded = {t.value: await self.ask("query-stats", {"target": t.value})
                     for t in VM_TARGETS if self.monitor.forwards(t.value)}  # fmt: skip
        for target in VM_TARGETS:
            pending = None if self.monitor.forwards(target.value) else self.monitor.fresh(target)
            if pending is not None:
                await pending
        registry = self.monitor.registry  # vmstats' own providers are always local
        local = {t: registry.extension_stats(t) if self.monitor.forwards(t.value)
                 else registry.all_stats(t) for t in VM_TARGETS}  # fmt: skip
        taken = time.time()
        sample = sample_of(taken, local, self._memo)
        if forwarded:
            values = dict(sample.values)
            values.update(sample_from_wire(taken, forwarded).values)
            sample = Sample(taken, values)
        return sample

    async def _schema_list(self) -> list[StatsSchema]:
        """The schemas; the same list while they stay the same."""
        registry = self.monitor.registry
        if any(self.monitor.forwards(t.value) for t in VM_TARGETS):
            forwarded = self._forwarded_schemas(await self.ask("query-stats-schemas", None))
            fresh = registry.extension_schemas() + forwarded
        else:
            fresh = registry.all_schemas()
        if fresh != self._schemas:
            self._schemas = fresh
        return self._schemas

    async def _vcpu_numbers(self) -> dict[str, int]:
        if self.monitor.forwards("vcpu"):  # QEMU knows its vCPUs
            return self._forwarded_vcpus(await self.ask("query-cpus-fast", None))
        return cpu_numbers(self.monitor.machine.cpus)

    async def read(self) -> VmReading:
        sample = await self._sample()
        schemas, vcpus = await self._schema_list(), await self._vcpu_numbers()
        return VmReading(self.monitor.machine.name or self.name, schemas, sample, vcpus,
                         {"qemu_version": "", **self._info()})  # fmt: skip
