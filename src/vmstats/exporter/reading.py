"""One VM read for one scrape: its schemas, every stat of the VM and of each vCPU, which
vCPU is which, and what to say about it in ``vmstats_vm_info``.

Everything is asked with QMP commands through ``ask`` (a command and its arguments to the
return value's bytes): a :class:`QmpClient` to a socket in exporter mode, the served VM's
own monitor in the daemon.  So the exported values are the very values QMP gives, through
one code path.  Schemas and vCPU lists change rarely: their replies are decoded again only
when their bytes change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

from vmstats.errors import ClientError
from vmstats.qmp.client import QmpClient, address_name, qemu_version
from vmstats.qmp.machine import CpuInfoFast, cpus_from_wire, name_from_wire
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import RateLimitedLog
from vmstats.stats.decode import schemas_from_wire, wire_results
from vmstats.stats.model import StatsFilter, StatsSchema, StatsTarget, StatsValue
from vmstats.top.sample import TARGETS

log = logging.getLogger(__name__)

#: A QMP command and its arguments -> the bytes of its return value.
Ask = Callable[[str, dict[str, Any] | None], Awaitable[bytes]]
#: Several QMP commands, sent together -> the bytes of their return values, in order.
AskAll = Callable[[Sequence[tuple[str, dict[str, Any] | None]]], Awaitable[list[bytes]]]


@dataclass(frozen=True, slots=True)
class ObjectStats:
    """The stats of one object (the VM, or one vCPU) as QMP gives them: in wire order,
    histogram buckets highest first (QEMU prepends)."""

    provider: str
    target: str
    qom_path: str  # "" for the VM itself
    stats: Sequence[tuple[str, StatsValue]]  # the same object while a provider's data is


@dataclass
class VmReading:
    """What a scrape exports of one VM: its objects in natural order (the VM, then vCPU 0
    first).  ``vcpus`` maps QOM paths to vCPU numbers."""

    name: str
    schemas: list[StatsSchema]
    objects: list[ObjectStats]
    vcpus: dict[str, int]
    info: dict[str, str]


_NAME = attrgetter("name")
_VALUE = attrgetter("value")


def objects_from_wire(target: str, reply: bytes | Any) -> list[ObjectStats]:
    """A ``query-stats`` return value (the bytes QMP sent, or decoded JSON) as objects in
    natural order; :class:`ClientError` if it is not one (a histogram needs a bucket)."""
    objects = []
    for result in reversed(wire_results(reply, target)):
        values = list(map(_VALUE, result.stats))
        if [] in values:
            raise ClientError(f"malformed query-stats reply for target {target}: "
                              "a histogram without buckets")  # fmt: skip
        stats = list(zip(map(_NAME, result.stats), values, strict=True))
        objects.append(ObjectStats(result.provider, target, result.qom_path or "", stats))
    return objects


@dataclass
class ReadCache:
    """Decoded schemas and vCPU lists of one VM, by the bytes they were decoded from."""

    schemas: tuple[bytes, list[StatsSchema]] = (b"", [])
    vcpus: tuple[bytes, dict[str, int]] = (b"", {})
    version: tuple[bytes, str] = (b"", "")


def _decoded(raw: bytes, seen: tuple[bytes, Any], decode: Callable[[Any], Any]) -> Any:
    if raw == seen[0]:
        return seen[1]
    try:
        return decode(json.loads(raw))
    except ValueError as exc:  # json.JSONDecodeError too
        raise ClientError(f"malformed reply: {exc}") from None


def _vcpu_numbers(cpus: Iterable[CpuInfoFast]) -> dict[str, int]:
    """vCPU numbers by QOM path (the ``vcpu`` label of a vCPU's stats)."""
    return {cpu.qom_path: cpu.cpu_index for cpu in cpus}


def _vcpu_numbers_from_wire(reply: Any) -> dict[str, int]:
    return _vcpu_numbers(cpus_from_wire(reply))


def _version(reply: Any) -> str:
    """QEMU's version; "" for vmstats' own sockets, whose version is the API they speak,
    not the VM's QEMU."""
    version = qemu_version(reply)
    if version is None:
        raise ClientError("malformed reply: query-version")
    return "" if str(reply.get("package", "")).startswith("vmstats") else version


#: What a scrape asks a VM's socket, in one write (:meth:`QmpClient.execute_all`).
_READ_VM: list[tuple[str, dict[str, Any] | None]] = [
    ("query-stats-schemas", None),
    ("query-cpus-fast", None),
    ("query-version", None),
    ("query-name", None),
    *(("query-stats", {"target": target.value}) for target in TARGETS),
]


async def read_vm(name: str, ask_all: AskAll, cache: ReadCache, info: dict[str, str]
                  ) -> VmReading:  # fmt: skip
    """Read every stat of one VM; :class:`ClientError` (or any VmstatsError) if it cannot.
    Every command goes out at once: one wake-up of the server, not six.

    It is labelled with QEMU's name for it (``query-name``), else ``name``.  ``info``
    labels ``vmstats_vm_info`` (its ``qemu_version``, if any, wins over the socket's)."""
    raw_schemas, raw_cpus, raw_version, raw_name, *raw_targets = await ask_all(_READ_VM)
    objects = []
    for target, raw in zip(TARGETS, raw_targets, strict=True):
        objects += objects_from_wire(target.value, raw)
    cache.schemas = (raw_schemas, _decoded(raw_schemas, cache.schemas, schemas_from_wire))
    cache.vcpus = (raw_cpus, _decoded(raw_cpus, cache.vcpus, _vcpu_numbers_from_wire))
    cache.version = (raw_version, _decoded(raw_version, cache.version, _version))
    try:
        named = json.loads(raw_name)
    except ValueError:
        named = None
    if not isinstance(named, dict):
        raise ClientError("malformed reply: query-name")
    name = name_from_wire(named) or name  # QEMU's -name: what its operators call it
    return VmReading(name, cache.schemas[1], objects, cache.vcpus[1],
                     {"qemu_version": cache.version[1], **info})  # fmt: skip


class Reader(Protocol):
    """One VM to read at each scrape."""

    name: str

    async def read(self) -> VmReading: ...


class SocketReader:
    """A VM behind a QMP socket (a QEMU's, or one of the daemon's): one connection per
    scrape, closed at once, so a QEMU monitor (one client at a time) is free between."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.name = address_name(address)
        self.timeout = timeout
        self._cache = ReadCache()

    async def read(self) -> VmReading:
        async with QmpClient(self.address, self.timeout) as qmp:
            info = {"pid": str(qmp.peer_pid or ""), "source": "QMP"}
            return await read_vm(self.name, qmp.execute_all, self._cache, info)


class MonitorReader:
    """A VM served in this process (by the daemon), read from its monitor's own state: the
    registry, the machine (name, vCPUs) and ``info``; what the monitor forwards to a QEMU
    is asked through the monitor, as a client of its socket would ask."""

    def __init__(self, name: str, monitor: Monitor, info: Callable[[], dict[str, str]]) -> None:
        self.name = name
        self.monitor = monitor
        self._dispatcher = monitor.dispatcher(lambda **_: None, negotiated=True)
        self._info = info
        self._cache = ReadCache()

    async def ask(self, command: str, arguments: dict[str, Any] | None) -> bytes:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        response = self._dispatcher.respond(request, wire=True)
        if not isinstance(response, dict):
            response = await response
        if "error" in response:
            raise ClientError(f"{command}: {response['error']['desc']}")
        return str(response["return"]).encode()

    async def _target(self, target: str) -> list[ObjectStats]:
        """A target's objects: from the registry, without JSON, unless forwarded."""
        if self.monitor.forwards(target):
            return objects_from_wire(target, await self.ask("query-stats", {"target": target}))
        results = self.monitor.registry.query_stats(StatsFilter(StatsTarget(target)))
        return [ObjectStats(r.provider.value, target, r.qom_path or "", r.stats)
                for r in reversed(results)]  # fmt: skip

    async def _schemas(self) -> list[StatsSchema]:
        """The schemas; the same list while the registry gives the same schema objects (the
        metric table is kept per list)."""
        if any(self.monitor.forwards(t.value) for t in TARGETS):
            raw = await self.ask("query-stats-schemas", None)
            self._cache.schemas = (raw, _decoded(raw, self._cache.schemas, schemas_from_wire))
            return self._cache.schemas[1]
        fresh = self.monitor.registry.query_stats_schemas()
        known = self._cache.schemas[1]
        if len(fresh) != len(known) or any(a is not b for a, b in zip(fresh, known, strict=False)):
            self._cache.schemas = (b"", fresh)
        return self._cache.schemas[1]

    async def _vcpus(self) -> dict[str, int]:
        if self.monitor.forwards(StatsTarget.VCPU.value):  # QEMU knows its vCPUs
            raw = await self.ask("query-cpus-fast", None)
            self._cache.vcpus = (raw, _decoded(raw, self._cache.vcpus, _vcpu_numbers_from_wire))
            return self._cache.vcpus[1]
        return _vcpu_numbers(self.monitor.machine.cpus)

    async def read(self) -> VmReading:
        objects = []
        for target in TARGETS:
            objects += await self._target(target.value)
        schemas, vcpus = await self._schemas(), await self._vcpus()
        return VmReading(self.monitor.machine.name or self.name, schemas, objects, vcpus,
                         {"qemu_version": "", **self._info()})  # fmt: skip


class SocketReaders:
    """The VMs that SOURCE arguments name, at each scrape: sockets and ``HOST:PORT`` as
    given, and the ``*.qmp`` sockets a directory holds now (a VM whose socket is gone
    is no longer exported; Prometheus marks its series stale)."""

    def __init__(self, sources: list[str], timeout: float) -> None:
        self.sources = sources
        self.timeout = timeout
        self._readers: dict[str, SocketReader] = {}
        self._log = RateLimitedLog(log)

    def addresses(self) -> list[str]:
        out: list[str] = []
        for source in self.sources:
            path = Path(source)
            if path.is_dir():
                out += sorted(str(p) for p in path.glob("*.qmp"))
            else:
                out.append(source)
        return list(dict.fromkeys(out))

    def __call__(self) -> list[Reader]:
        addresses = self.addresses()
        if not addresses:
            self._log.warning("empty", "no VM to export: %s hold(s) no *.qmp socket (yet)",
                              " ".join(self.sources))  # fmt: skip
        self._readers = {a: self._readers.get(a) or SocketReader(a, self.timeout)
                         for a in addresses}  # fmt: skip
        return list(self._readers.values())
