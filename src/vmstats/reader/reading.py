"""One read of one VM, and the readers that make it: the one way every tool reads a VM.

A :class:`VmReading` is everything a tool shows or exports of a VM at one moment: its
name, its schemas, every stat (a :class:`Sample`), which vCPU is which, and what to say
about where it came from.  ``top`` (its view, batch modes and recordings), the exporter
and the daemon's ``/metrics`` all take readings from a :class:`Reader`:

- :class:`QmpReader`: a VM behind a QMP socket, a QEMU's or one of ours;
- :class:`RegistryReader`: a VM whose stats are in this process (the demo);
- ``vmstats.serve.reader.MonitorReader``: a VM the host daemon serves.

A new source of stats (libvirt, say) plugs in as one more :class:`Reader`.

**Connection policy.** A QEMU monitor serves one client at a time: a tool that kept it
would lock every other tool out (a second ``top``, the exporter, an operator's
``qmp-shell``).  So :class:`QmpReader` connects to a QEMU for each read and closes at
once, and keeps nothing but decoded replies between reads.  A read is two round trips:
the greeting, then one write of ``qmp_capabilities`` and every command, whose replies
come back in order.  Schemas and vCPU lists change rarely: they are decoded again only
when their bytes change.  vmstats' own sockets serve many clients at once: their
connection is kept, and a read is one round trip for the stats (``top`` watching 256
VMs every second would otherwise open 256 connections a second, on both sides).
:func:`read_all` reads many VMs at once: the requests of every kept connection are
written first, and their replies awaited together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vmstats.errors import ClientError, NoAnswer, RemoteError, os_reason
from vmstats.qmp.client import (
    DEFAULT_TIMEOUT,
    Request,
    address_name,
    decode,
    is_vmstats,
    no_query_stats,
    parse_address,
    qemu_version,
)
from vmstats.qmp.machine import CpuInfoFast, cpus_from_wire, name_from_wire
from vmstats.qmp.pipelined import Batch, Outcomes, Pipelined
from vmstats.reader.sample import (
    Sample,
    SampleMemo,
    WireMemo,
    same_objects,
    sample_from_wire,
    take_sample,
)
from vmstats.stats.decode import schemas_from_wire
from vmstats.stats.model import EXTENSION_PROVIDERS, VM_TARGET_NAMES, VM_TARGETS, StatsSchema
from vmstats.stats.registry import StatsRegistry

T = TypeVar("T")


@dataclass
class VmReading:
    """One VM at one moment.  ``vcpus`` maps each vCPU's QOM path to its number (QEMU's
    CPU index); ``info`` says where the stats came from (``source``, ``pid``,
    ``qemu_version``).  ``schemas`` is the same list object while the VM's schemas stay
    the same, so a consumer can keep what it derived from them."""

    name: str
    schemas: list[StatsSchema]
    sample: Sample
    vcpus: dict[str, int]
    info: dict[str, str] = field(default_factory=dict)

    def cpus(self) -> list[str]:
        """The vCPUs' QOM paths by number."""
        return sorted(self.vcpus, key=self.vcpus.__getitem__)


class Reader(Protocol):
    """One VM.  ``read`` raises :class:`vmstats.errors.VmstatsError` (or ``OSError``)
    when the VM cannot be read now; ``name`` is what to call it until a reading names it."""

    name: str

    async def read(self) -> VmReading: ...


def vcpu_numbers(paths: Sequence[str]) -> dict[str, int]:
    """vCPU numbers for QOM paths given in number order."""
    return {path: number for number, path in enumerate(paths)}


class Decoded(Generic[T]):
    """A reply decoded again only when its bytes change.  Schemas and vCPU lists change
    rarely, and a consumer keeps what it made of the same object (the exporter's metric
    table is made once per schema list)."""

    def __init__(self, parse: Callable[[bytes], T], empty: T) -> None:
        self._parse = parse
        self._raw = b""
        self.value = empty

    def __call__(self, raw: bytes) -> T:
        if raw != self._raw:
            self.value, self._raw = self._parse(raw), raw
        return self.value


def schemas_of(raw: bytes) -> list[StatsSchema]:
    """A ``query-stats-schemas`` return value's bytes, decoded and checked."""
    return schemas_from_wire(decode(raw, "query-stats-schemas"))


def cpus_of(raw: bytes) -> list[CpuInfoFast]:
    """A ``query-cpus-fast`` return value's bytes, decoded and checked."""
    return cpus_from_wire(decode(raw, "query-cpus-fast"))


def cpu_numbers(cpus: Iterable[CpuInfoFast]) -> dict[str, int]:
    """vCPU numbers (QEMU's CPU index) by QOM path."""
    return {cpu.qom_path: cpu.cpu_index for cpu in cpus}


def _vcpus_and_vmm(raw: bytes) -> tuple[dict[str, int], int | None]:
    """A ``query-cpus-fast`` return value's bytes: vCPU numbers, and the process that runs
    the vCPU threads it names."""
    cpus = cpus_of(raw)
    return cpu_numbers(cpus), vmm_of([cpu.thread_id for cpu in cpus])


#: What a read asks a QMP socket, in one write after the greeting.
_NEGOTIATE: Request = ("qmp_capabilities", None)
_READ_VM: list[Request] = [
    ("query-stats-schemas", None),
    ("query-cpus-fast", None),
    ("query-name", None),
    *(("query-stats", {"target": target.value}) for target in VM_TARGETS),
]
#: vmstats' own providers, asked of vmstats' own sockets by name (their values are
#: about vCPUs): the sample's key for each reply, and the requests.
_EXTENSIONS = sorted(p.value for p in EXTENSION_PROVIDERS)
_OURS_KEYS = [f"vcpu:{p}" for p in _EXTENSIONS]
_READ_OURS_SCHEMAS: list[Request] = [("query-stats-schemas", {"provider": p}) for p in _EXTENSIONS]
_READ_OURS: list[Request] = [("query-stats", {"target": "vcpu", "providers": [{"provider": p}]})
                             for p in _EXTENSIONS]  # fmt: skip
#: What a read asks on a kept connection (always one of ours): the stats; where the
#: server has vmstats' own providers, the vCPUs' of every provider in one request.
_READ_QEMUS: list[Request] = [("query-stats", {"target": t.value}) for t in VM_TARGETS]
_READ_ALL: list[Request] = [
    ("query-stats", {"target": "vm"}),
    ("query-stats", {"target": "vcpu", "providers": [{"provider": p}
                                                     for p in ("kvm", *_EXTENSIONS)]}),
]  # fmt: skip
_KEPT_QEMUS, _KEPT_ALL = Batch(_READ_QEMUS), Batch(_READ_ALL)
#: A first read: a QEMU's, and one of ours (its own providers too).
_FIRST = Batch([_NEGOTIATE, *_READ_VM])
_FIRST_OURS = Batch([_NEGOTIATE, *_READ_VM, *_READ_OURS_SCHEMAS, *_READ_OURS])
#: On a kept connection when the vCPUs changed: everything a first read asks.
_KEPT_AGAIN = Batch([*_READ_VM, *_READ_OURS_SCHEMAS, *_READ_OURS])


class QmpReader:
    """A VM behind a QMP socket (unix path or ``HOST:PORT``).  A QEMU's: one connection
    per read, closed at once (the module's connection policy).  One of ours (``vmstats
    serve``'s, the demo's: many clients at once): the connection is kept, and a read is
    the two ``query-stats``, one round trip; schemas, vCPUs and name are asked again when
    the vCPUs the stats name change (a hot plug), or on a new connection."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.name = address_name(address)
        self.timeout = timeout
        self._schemas: Decoded[list[StatsSchema]] = Decoded(schemas_of, [])
        self._ours: list[Decoded[list[StatsSchema]]] = [Decoded(schemas_of, [])
                                                        for _ in _EXTENSIONS]  # fmt: skip
        self._joined: tuple[list[list[StatsSchema]], list[StatsSchema]] = ([], [])
        self._vcpus: Decoded[tuple[dict[str, int], int | None]] = Decoded(
            _vcpus_and_vmm, ({}, None)
        )
        self._wire = WireMemo()
        self._kept: Pipelined | None = None  # a connection to one of our servers
        self._pid: int | None = None  # the process serving it, as the first read found
        self._stale = False  # the vCPUs changed: the next read asks everything again
        self._said: tuple[str | None, dict[str, int], dict[str, str]] = (None, {}, {})

    def expire(self) -> None:
        """A begun read's replies did not come in time: it fails as busy."""
        if self._kept is not None:
            self._kept.expire()

    def start(self) -> asyncio.Future[Outcomes] | None:
        """A read on the kept connection, begun (its requests written): the future of
        its replies, for :meth:`finish`.  None when there is no such read to begin (no
        kept connection, or one made on another loop; the vCPUs changed): :meth:`read`."""
        kept = self._kept
        if kept is None or self._stale or not kept.usable:
            return None
        return kept.ask(_KEPT_ALL if any(d.value for d in self._ours) else _KEPT_QEMUS)

    def finish(self, outcomes: Outcomes | BaseException) -> VmReading | None:
        """The reading that a begun read's replies (or its failure) give; None when
        :meth:`read` must follow: the connection failed (let go: a new one is made) or
        the vCPUs the stats name changed (a hot plug: everything is asked again)."""
        if isinstance(outcomes, BaseException) or any(
                isinstance(outcome, RemoteError) for outcome in outcomes):  # fmt: skip
            if isinstance(outcomes, BaseException) and not isinstance(outcomes, ClientError):
                raise outcomes  # cancelled, Ctrl-C: not the VM's news
            self.close()  # the server went (or restarted): a new connection says
            return None
        before = self._wire.values
        sample = self._sample(time.time(), outcomes)
        own_name, vcpus, info = self._said
        if sample.values is not before and set(vcpus) != {
                key[2] for key in sample.objects("vcpu")}:  # plugged, or gone  # fmt: skip
            self._stale = True
            return None
        return VmReading(own_name or self.name, self._schema_list(), sample, vcpus, info)

    async def read(self) -> VmReading:
        begun = self.start()
        if begun is not None:
            assert self._kept is not None
            try:
                reading = self.finish(await self._kept.within(begun))
            except NoAnswer:
                self.close()  # said, not waited for again on a new connection
                raise
            except ClientError as exc:
                reading = self.finish(exc)
            except BaseException:
                self.close()  # cancelled mid-request: the replies would be out of step
                raise
            if reading is not None:
                return reading
        if self._kept is not None and self._stale and self._kept.usable:
            kept = self._kept
            try:
                outcomes = await kept.within(kept.ask(_KEPT_AGAIN))
            except BaseException:
                self.close()
                raise
            self._stale = False
            return self._reading(outcomes, time.time(), self._pid, kept.version)
        self.close()
        return await self._read_anew()

    async def _read_anew(self) -> VmReading:
        """A read on a new connection: every command after the greeting, in one write.
        A QEMU's connection is let go at once; one of ours is kept for the next reads."""
        conn = await Pipelined.open(self.address, self.timeout)
        ours = is_vmstats(conn.version)
        try:
            negotiated, *outcomes = await conn.within(conn.ask(_FIRST_OURS if ours else _FIRST))
            taken = time.time()
            if isinstance(negotiated, RemoteError):  # QEMU then refuses every command after it
                raise negotiated
            self._pid = conn.peer_pid
            reading = self._reading(outcomes, taken, self._pid, conn.version)
        except BaseException:
            conn.close()
            raise
        if ours:
            self._kept = conn
        else:
            conn.close()  # a QEMU's monitor: free for its other clients
        return reading

    def _reading(self, outcomes: list[bytes | RemoteError], taken: float, pid: int | None,
                 greeting: dict[str, Any]) -> VmReading:  # fmt: skip
        """A reading from the replies to :data:`_READ_VM` (and to vmstats' own providers'
        requests, after them, from one of vmstats' sockets)."""
        outcomes, ours = outcomes[: len(_READ_VM)], outcomes[len(_READ_VM) :]
        schemas, cpus, name, *targets = outcomes
        for command, outcome in zip(_READ_VM, outcomes, strict=True):
            if isinstance(outcome, RemoteError) and command[0] in ("query-stats-schemas",
                                                                   "query-stats"):  # fmt: skip
                if outcome.error_class == "CommandNotFound":
                    raise no_query_stats(greeting, self.address)
                # the reader's own commands, which nobody typed: the server's words alone
                raise ClientError(outcome.desc) from None
        assert isinstance(schemas, bytes)
        if ours:
            self._ours_schemas(ours[: len(_EXTENSIONS)])
            targets = [*targets, *ours[len(_EXTENSIONS) :]]
        sample = self._sample(taken, targets)
        own_name = None
        if isinstance(name, bytes):
            own_name = name_from_wire(_object(name, "query-name"))
        # vCPU numbers from query-cpus-fast (QEMU's QOM paths are not contiguous), else from
        # the order of the vCPU stats (a server without it)
        if isinstance(cpus, RemoteError):
            vcpus, vmm = vcpu_numbers([key[2] for key in sample.objects("vcpu")]), None
        else:
            vcpus, vmm = self._vcpus(cpus)
        version = _version(greeting)
        if not version:  # one of our sockets: the peer is the daemon (or the demo's parent)
            pid = vmm or pid
        info = {"source": "QMP", "pid": str(pid or ""), "qemu_version": version}
        self._said = (own_name, vcpus, info)
        return VmReading(own_name or self.name, self._schema_list(schemas), sample, vcpus, info)

    def _ours_schemas(self, replies: Sequence[bytes | RemoteError]) -> None:
        """vmstats' own providers' schemas (none from a vmstats that lacks them)."""
        for decoded, reply in zip(self._ours, replies, strict=True):
            decoded(reply if isinstance(reply, bytes) else b"[]")

    def _schema_list(self, raw: bytes | None = None) -> list[StatsSchema]:
        """Every schema, vmstats' own providers' first (as a server that prepends them
        sends them); the same list while its parts stay the same."""
        parts = [d.value for d in self._ours] + [self._schemas(raw) if raw is not None
                                                 else self._schemas.value]  # fmt: skip
        if not same_objects(parts, self._joined[0]):
            self._joined = (parts, [s for part in parts for s in part])
        return self._joined[1]

    def _sample(self, taken: float, targets: Sequence[bytes | RemoteError]) -> Sample:
        keys = [t.value for t in VM_TARGETS] + _OURS_KEYS
        replies = {k: r if isinstance(r, bytes) or k in VM_TARGET_NAMES else b"[]"
                   for k, r in zip(keys, targets, strict=False)}  # fmt: skip
        return sample_from_wire(taken, replies, self._wire)

    def close(self) -> None:
        """Let a kept connection go."""
        if self._kept is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: so is it
                self._kept.close()
            self._kept = None
        self._stale = False


def _expire(readers: Sequence[QmpReader]) -> None:
    for reader in readers:
        reader.expire()


async def read_all(readers: Sequence[Reader],
                   timeout: float | None = None) -> list[VmReading | BaseException]:  # fmt: skip
    """Every reader read at once: each one's reading, or what it raised.  Readers with a
    kept connection (:meth:`QmpReader.start`) have their requests written first and
    their replies awaited together, under one deadline (theirs, or ``timeout`` if
    shorter): no task, no timer per VM, which were most of a refresh of hundreds of VMs.
    A kept read that gets no answer in time fails as such (a connection tried anew
    would wait as long again).  The others, and the kept reads that could not finish
    otherwise (the server hung up, the vCPUs changed), are read as tasks, each within
    ``timeout`` when given, each begun on a turn of the loop of its own: a local read
    never waits, and hundreds of them in one turn kept every other client of the loop
    waiting (:mod:`vmstats.slices`)."""
    begun = [r.start() if isinstance(r, QmpReader) else None for r in readers]
    waiting = [future for future in begun if future is not None]
    if waiting:
        loop = asyncio.get_running_loop()
        kept = [r for r, future in zip(readers, begun, strict=True)
                if future is not None and isinstance(r, QmpReader)]  # fmt: skip
        limit = min(r.timeout for r in kept)
        limit = limit if timeout is None else min(limit, timeout)
        timer = loop.call_later(limit, _expire, kept)
        try:
            await asyncio.wait(waiting)
        finally:
            timer.cancel()
    out: list[VmReading | BaseException | None] = []
    for reader, future in zip(readers, begun, strict=True):
        if future is None:
            out.append(None)
            continue
        assert isinstance(reader, QmpReader)
        failed = future.exception()
        if isinstance(failed, NoAnswer):  # said, not tried again on a new connection
            reader.close()
            out.append(failed)
            continue
        try:
            out.append(reader.finish(failed or future.result()))
        except Exception as exc:  # noqa: BLE001 - the VM's news, as a task's would be
            out.append(exc)

    async def one(reader: Reader) -> VmReading:
        if timeout is None:
            return await reader.read()
        async with asyncio.timeout(timeout):
            return await reader.read()

    rest = [i for i, found in enumerate(out) if found is None]
    tasks: list[asyncio.Future[VmReading]] = []
    try:
        for i in rest:  # each begun on a turn of the loop of its own (vmstats.slices)
            tasks.append(asyncio.ensure_future(one(readers[i])))
            await asyncio.sleep(0)  # its read, as far as it goes without waiting, then others
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    for i, found in zip(rest, await asyncio.gather(*tasks, return_exceptions=True),
                        strict=True):  # fmt: skip
        out[i] = found
    return [found for found in out if found is not None]


def vmm_of(threads: Sequence[int]) -> int | None:
    """The process that runs these vCPU threads (its ``Tgid``), on this host; None if
    none can be told (another host, a thread gone, no thread id given)."""
    for tid in threads:
        try:
            status = Path(f"/proc/{int(tid)}/status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    return None


def _object(raw: bytes, command: str) -> dict[str, Any]:
    value = decode(raw, command)
    if not isinstance(value, dict):
        raise ClientError(f"malformed reply: {command} did not return an object")
    return value


def _version(greeting: dict[str, Any]) -> str:
    """QEMU's version from a greeting; "" for vmstats' own sockets, whose version is the
    API they speak, not the VM's QEMU."""
    if is_vmstats(greeting):
        return ""
    return qemu_version(greeting) or ""


class RegistryReader:
    """A VM whose stats are in this process (the demo): read without JSON."""

    def __init__(self, name: str, registry: StatsRegistry, cpus: Sequence[str],
                 info: Callable[[], dict[str, str]] = dict) -> None:  # fmt: skip
        self.name = name
        self.registry = registry
        self._vcpus = vcpu_numbers(cpus)
        self._info = info
        self._schemas: list[StatsSchema] = []
        self._memo = SampleMemo()

    async def read(self) -> VmReading:
        fresh = self.registry.all_schemas()
        if fresh != self._schemas:
            self._schemas = fresh
        sample = take_sample(self.registry, self._memo)
        return VmReading(self.name, self._schemas, sample, self._vcpus, self._info())


def socket_addresses(sources: Sequence[str]) -> list[str]:
    """The sockets that SOURCE arguments name now: sockets and ``HOST:PORT`` as given, and
    the ``*.qmp`` sockets a directory holds (the daemon's run directory), each once: a
    socket named twice (by two spellings, a link, or its directory and itself) is one VM,
    under the first name it was given."""
    out: dict[str, str] = {}  # the socket itself -> how it was named first
    for source in sources:
        path = Path(source)
        # a path that cannot be looked at (a folder on the way we may not enter) is
        # tried as a socket: connecting says why it cannot be read
        found = sorted(str(p) for p in path.glob("*.qmp")) if os.path.isdir(path) else [source]
        for address in found:
            out.setdefault(socket_key(address), address)
    return list(out.values())


def unlistable(directory: str) -> str | None:
    """Why the sockets of ``directory`` cannot be found (it cannot be listed: the
    daemon's run directory, for a user outside its group), or None."""
    try:
        with os.scandir(directory):
            return None
    except OSError as exc:
        return os_reason(exc)


def socket_key(address: str) -> str:
    """What tells two addresses of one socket apart from two sockets: a path's real path
    (links and ``./`` resolved); ``HOST:PORT`` as it is."""
    return address if isinstance(parse_address(address), tuple) else os.path.realpath(address)


__all__ = [
    "QmpReader",
    "Reader",
    "RegistryReader",
    "VmReading",
    "socket_addresses",
    "vcpu_numbers",
]
