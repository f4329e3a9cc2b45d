"""The VMs being watched: where their samples come from, and their state between refreshes.

A *source* yields one VM's schemas and samples: a registry in this process (the demo), a
QMP socket (any QEMU >= 7.1, or our own sockets) or a directory whose ``*.qmp`` sockets
are each a VM, picked up and dropped as they appear and vanish.  :class:`Watch` keeps,
per VM, the baseline (``r`` resets it), the previous and the current sample, and whether
the VM is gone, and turns them into rows (:mod:`.frame`).  A recording's replay feeds
the same :meth:`Watch.apply`, so live and replayed views are one view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from vmstats.errors import ClientError, VmstatsError
from vmstats.qmp.client import DEFAULT_TIMEOUT, QmpClient, address_name
from vmstats.qmp.machine import cpu_paths, name_from_wire
from vmstats.stats.decode import results_from_wire, schemas_from_wire
from vmstats.stats.model import StatsSchema, StatsTarget
from vmstats.stats.order import natural_qom_paths
from vmstats.stats.registry import StatsRegistry
from vmstats.top.frame import RowMemo, StatFilter, StatRow, TotalMemo, total_rows, vm_rows
from vmstats.top.sample import TARGETS, Sample, Schemas, sample_from_wire, take_sample

T = TypeVar("T")


class Source(Protocol):
    """One VM.  ``read`` raises :class:`VmstatsError` when the VM cannot be read now.

    ``name`` is what the VM is shown as; ``own_name`` is the VM's own name once known
    (QEMU's ``-name``, by ``query-name``), which the watch then shows instead."""

    name: str
    own_name: str | None

    async def schemas(self) -> list[StatsSchema]: ...

    async def sample(self) -> Sample: ...

    async def cpus(self) -> list[str]: ...

    async def close(self) -> None: ...


class RegistrySource:
    """A VM whose stats are in this process (the demo)."""

    def __init__(self, name: str, registry: StatsRegistry, cpus: Sequence[str]) -> None:
        self.name = name
        self.own_name: str | None = None
        self.registry = registry
        self._cpus = list(cpus)

    async def schemas(self) -> list[StatsSchema]:
        return self.registry.query_stats_schemas()

    async def sample(self) -> Sample:
        return take_sample(self.registry)

    async def cpus(self) -> list[str]:
        return self._cpus

    async def close(self) -> None:
        pass


class QmpSource:
    """A VM behind a QMP socket.  The connection is kept between refreshes and made
    again after a failure; every step is bounded by ``timeout``.

    Replies are read as bytes (:class:`QmpClient`) and the stats decoded straight from
    them (:func:`sample_from_wire`): a refresh of 8 VMs of 16 vCPUs spent most of its
    reading time in qemu.qmp's message handling, and ``top`` runs all day.
    """

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.name = address_name(address)
        self.own_name: str | None = None
        self.timeout = timeout
        self._session: QmpClient | None = None
        self._commands: set[str] = set()

    async def _connected(self) -> QmpClient:
        if self._session is None:
            session = QmpClient(self.address, self.timeout)
            await session.__aenter__()
            try:
                commands = await session.stats_commands()
                if "query-name" in commands:
                    self.own_name = name_from_wire(await session.value("query-name"))
            except BaseException:
                session.close()
                raise
            self._session, self._commands = session, commands
        return self._session

    async def _call(self, work: Callable[[QmpClient], Awaitable[T]]) -> T:
        """``work`` on the connection; a failure closes it (the next call reconnects)."""
        session = await self._connected()
        try:
            return await work(session)
        except VmstatsError:
            await self.close()
            raise

    async def schemas(self) -> list[StatsSchema]:
        async def read(session: QmpClient) -> list[StatsSchema]:
            return schemas_from_wire(await session.value("query-stats-schemas"))

        return await self._call(read)

    async def sample(self) -> Sample:
        async def read(session: QmpClient) -> Sample:
            targets = [t.value for t in TARGETS]
            replies = await session.execute_all([("query-stats", {"target": t}) for t in targets])
            return sample_from_wire(time.time(), dict(zip(targets, replies, strict=True)))

        return await self._call(read)

    async def cpus(self) -> list[str]:
        async def read(session: QmpClient) -> list[str]:
            if "query-cpus-fast" in self._commands:
                return cpu_paths(await session.value("query-cpus-fast"), self.address)
            reply = await session.value("query-stats", {"target": "vcpu"})
            return natural_qom_paths(results_from_wire(reply))

        return await self._call(read)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()


@dataclass
class VmState:
    """One VM between refreshes."""

    name: str
    schema_list: list[StatsSchema] = field(default_factory=list)  # as the server gave them
    schemas: Schemas = field(default_factory=Schemas)
    cpus: list[str] = field(default_factory=list)
    baseline: Sample | None = None
    previous: Sample | None = None
    current: Sample | None = None
    gone: str | None = None
    #: Rows of stats that did not move, per choice of vCPUs (:data:`RowMemo`).
    memos: dict[tuple[int, ...] | None, RowMemo] = field(default_factory=dict, repr=False)

    def rows(self, vcpus: Sequence[int] | None = None) -> list[StatRow]:
        if self.current is None or self.gone is not None:
            return []
        paths = None
        if vcpus is not None:
            paths = {self.cpus[i] for i in vcpus if 0 <= i < len(self.cpus)}
        return vm_rows(
            self.name,
            self.schemas,
            self.baseline or self.current,
            self.previous or self.current,
            self.current,
            paths,
            self.memos.setdefault(None if vcpus is None else tuple(vcpus), {}),
        )


class Watch:
    """Every VM watched, by name, in the order they were first seen."""

    def __init__(
        self,
        sources: Sequence[Source] = (),
        directories: Sequence[Path] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.sources: dict[str, Source] = {}
        self.vms: dict[str, VmState] = {}
        self.directories = list(directories)
        self.timeout = timeout
        for source in sources:
            self._add(source)
        self.taken = 0.0
        self._totals: TotalMemo = {}

    def _unique(self, name: str, source: Source) -> str:
        """``name``, or ``name'`` (and so on) if another VM is shown as ``name``."""
        while name in self.sources and self.sources[name] is not source:
            name += "'"
        return name

    def _add(self, source: Source) -> None:
        name = self._unique(source.name, source)
        source.name = name
        self.sources[name] = source
        self.vms.setdefault(name, VmState(name))

    def _rename(self, old: str, source: Source) -> str:
        """Show a VM read for the first time by its own name, where it has one (QEMU's
        ``-name``: what its operators call it; a socket's file name is often just
        ``qmp``).  It keeps that name from then on, gone or back."""
        if not source.own_name or source.own_name == old:
            return old
        new = self._unique(source.own_name, source)
        source.name = new
        self.sources = {new if n == old else n: s for n, s in self.sources.items()}
        self.vms = {new if n == old else n: v for n, v in self.vms.items()}
        self.vms[new].name = new
        return new

    def _scan(self) -> None:
        """Pick up sockets that appeared in the watched directories; forget none (a VM
        whose socket vanished is shown as gone, and comes back with it)."""
        known = {getattr(s, "address", None) for s in self.sources.values()}
        for directory in self.directories:
            for path in sorted(directory.glob("*.qmp")):
                if str(path) not in known:
                    self._add(QmpSource(str(path), self.timeout))

    async def refresh(self) -> None:
        """Read every VM once, concurrently."""
        self._scan()
        names = list(self.sources)
        outcomes = await asyncio.gather(
            *(self._read(self.sources[n]) for n in names), return_exceptions=True
        )
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.apply(name, gone=_reason(outcome))
                continue
            if self.vms[name].current is None:  # its first sample
                name = self._rename(name, self.sources[name])
            schemas, cpus, sample = outcome
            self.apply(name, schemas=schemas, cpus=cpus, sample=sample)
        self.taken = time.time()

    async def _read(self, source: Source) -> tuple[list[StatsSchema] | None, list[str] | None,
                                                    Sample]:  # fmt: skip
        state = self.vms[source.name]
        fresh = state.current is None or state.gone is not None
        schemas = await source.schemas() if fresh else None
        cpus = await source.cpus() if fresh else None
        return schemas, cpus, await source.sample()

    def apply(
        self,
        name: str,
        *,
        schemas: Sequence[StatsSchema] | None = None,
        cpus: Sequence[str] | None = None,
        sample: Sample | None = None,
        gone: str | None = None,
    ) -> None:
        """One VM's news: new schemas or vCPUs, a sample, or that it is gone."""
        state = self.vms.setdefault(name, VmState(name))
        if schemas is not None:
            state.schema_list = list(schemas)
            state.schemas = Schemas.of(schemas)
        if cpus is not None:
            state.cpus = list(cpus)
        if gone is not None:
            state.gone = gone
            return
        if sample is None:
            return
        if state.gone is not None or state.current is None:  # (back) from nothing: restart
            state.baseline = state.previous = None
            state.gone = None
        if state.baseline is None:
            state.baseline = sample
        state.previous, state.current = state.current, sample
        if not state.cpus:
            state.cpus = [k[2] for k in sample.objects(StatsTarget.VCPU.value)]

    def reset(self) -> None:
        """Totals count from now (kvm_stat's ``r``)."""
        for state in self.vms.values():
            state.baseline = state.current

    def rows(
        self, stat_filter: StatFilter | None = None, vcpus: Sequence[int] | None = None
    ) -> tuple[dict[str, list[StatRow]], list[StatRow]]:
        """Rows per VM, and their totals across VMs (empty with one VM)."""
        keep = stat_filter or StatFilter()
        per_vm = {
            name: [r for r in state.rows(vcpus) if keep(r.name)] for name, state in self.vms.items()
        }
        live = [rows for name, rows in per_vm.items() if self.vms[name].gone is None]
        return per_vm, total_rows(live, self._totals) if len(self.vms) > 1 else []

    async def close(self) -> None:
        for source in self.sources.values():
            await source.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError | VmstatsError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"
