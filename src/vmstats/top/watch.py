"""The VMs being watched and their state between refreshes.

Each VM is read by a :class:`vmstats.reader.reading.Reader` (a QMP socket, or a registry
in this process for the demo); the sockets of a watched directory are picked up as they
appear.  :class:`Watch` keeps, per VM, the baseline (``r`` resets it), the previous and
the current sample, and whether the VM is gone, and turns them into rows (:mod:`.frame`).
A recording's replay feeds the same :meth:`Watch.apply`, so live and replayed views are
one view.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmstats.errors import ClientError, VmstatsError
from vmstats.qmp.client import DEFAULT_TIMEOUT, parse_address
from vmstats.reader.reading import (
    QmpReader,
    Reader,
    VmReading,
    read_all,
    socket_addresses,
    socket_key,
)
from vmstats.reader.sample import Sample, Schemas, same_objects
from vmstats.stats.model import StatsSchema, StatsTarget
from vmstats.top.frame import RowMemo, StatFilter, StatRow, TotalMemo, total_rows, vm_rows


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
    #: per choice of vCPUs, the rows of a VM none of whose stats moved, and the baseline
    #: and sample they were made of: while it stays still, they are its rows
    stills: dict[tuple[int, ...] | None, tuple[Sample, Sample, list[StatRow]]] = field(
        default_factory=dict, repr=False)  # fmt: skip

    def rows(self, vcpus: Sequence[int] | None = None) -> list[StatRow]:
        if self.current is None or self.gone is not None:
            return []
        choice = None if vcpus is None else tuple(vcpus)
        baseline = self.baseline or self.current
        still = self.previous is not None and same_values(self.previous, self.current)
        if still:
            kept = self.stills.get(choice)
            if kept is not None and kept[0] is baseline and same_values(kept[1], self.current):
                return kept[2]
        rows = self._rows(vcpus)
        if still:
            self.stills[choice] = (baseline, self.current, rows)
        return rows

    def _rows(self, vcpus: Sequence[int] | None) -> list[StatRow]:
        assert self.current is not None
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


def same_values(one: Sample, other: Sample) -> bool:
    """Do two samples hold the very same value objects (nothing was read anew: a VM
    whose stats stood still, :func:`vmstats.reader.sample.sample_from_wire`)?"""
    mine, theirs = one.values, other.values
    return mine is theirs or (mine.keys() == theirs.keys()
                              and same_objects(mine.values(), theirs.values()))  # fmt: skip


class Watch:
    """Every VM watched, by name, in the order they were first seen."""

    def __init__(
        self,
        readers: Sequence[Reader] = (),
        directories: Sequence[Path] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.readers: dict[str, Reader] = {}
        self.vms: dict[str, VmState] = {}
        self.directories = list(directories)
        self.timeout = timeout
        for reader in readers:
            self._add(reader)
        self.taken = 0.0
        self._totals: TotalMemo = {}
        self._stamps: list[int | None] | None = None  # the directories' mtimes when scanned
        #: the last rows: for which choice, from which VM rows, and what they gave
        self._last: tuple[object, list[tuple[str, list[StatRow], str | None]],
                          dict[str, list[StatRow]], list[StatRow]] | None = None  # fmt: skip

    def _unique(self, name: str, reader: Reader) -> str:
        """``name``, or ``name'`` (and so on) if another VM is shown as ``name``."""
        while name in self.readers and self.readers[name] is not reader:
            name += "'"
        return name

    def _add(self, reader: Reader) -> None:
        name = self._unique(reader.name, reader)
        reader.name = name
        self.readers[name] = reader
        self.vms.setdefault(name, VmState(name))

    def _rename(self, old: str, reader: Reader, own_name: str) -> str:
        """Show a VM read for the first time by its own name, where it has one (QEMU's
        ``-name``: what its operators call it; a socket's file name is often just
        ``qmp``).  It keeps that name from then on, gone or back."""
        if own_name == old:
            return old
        new = self._unique(own_name, reader)
        reader.name = new
        self.readers = {new if n == old else n: r for n, r in self.readers.items()}
        self.vms = {new if n == old else n: v for n, v in self.vms.items()}
        self.vms[new].name = new
        return new

    def _scan(self) -> None:
        """Pick up sockets that appeared in the watched directories; forget none (a VM
        whose socket vanished is shown as gone, and comes back with it)."""
        if not self.directories:
            return
        stamps: list[int | None] = []
        for directory in self.directories:  # a directory's entries changed: its mtime did
            try:
                stamps.append(os.stat(directory).st_mtime_ns)
            except OSError:
                stamps.append(None)
        if stamps == self._stamps:
            return
        self._stamps = stamps
        known = {socket_key(r.address) for r in self.readers.values() if isinstance(r, QmpReader)}
        for address in socket_addresses([str(d) for d in self.directories]):
            if socket_key(address) not in known:
                self._add(QmpReader(address, self.timeout))

    async def refresh(self) -> None:
        """Read every VM once, concurrently."""
        self._scan()
        names = list(self.readers)
        outcomes = await read_all([self.readers[n] for n in names])
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # Ctrl-C, cancellation: not a VM's news
                self.apply(name, gone=self._gone(self.readers[name], outcome))
                continue
            if self.vms[name].current is None:  # its first sample
                name = self._rename(name, self.readers[name], outcome.name)
            self.take(name, outcome)
        self.taken = time.time()

    def _gone(self, reader: Reader, exc: Exception) -> str:
        """Why a VM's read failed, for people: a socket that left a watched directory is
        a VM that stopped or that the daemon stopped serving, not a connection error."""
        if (isinstance(reader, QmpReader) and not isinstance(parse_address(reader.address), tuple)
                and Path(reader.address).parent in self.directories
                and not os.path.lexists(reader.address)):  # fmt: skip
            return "its socket was removed (the VM stopped, or is no longer served)"
        return _reason(exc)

    def take(self, name: str, reading: VmReading) -> None:
        """One reading of VM ``name``: its schemas and vCPUs where they changed, its sample."""
        state = self.vms.setdefault(name, VmState(name))
        schemas = reading.schemas if reading.schemas is not state.schema_list else None
        cpus = reading.cpus()
        self.apply(name, schemas=schemas, cpus=cpus if cpus != state.cpus else None,
                   sample=reading.sample)  # fmt: skip

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
            state.schema_list = schemas if isinstance(schemas, list) else list(schemas)
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

    def count_from_zero(self) -> None:
        """Totals are the counters' own values, since each VM started (what ``query``
        shows, and kvm_stat's ``-1``): the baseline holds nothing, so it counts as 0."""
        for state in self.vms.values():
            if state.current is not None:
                state.baseline = Sample(state.current.taken, {})

    def rows(
        self, stat_filter: StatFilter | None = None, vcpus: Sequence[int] | None = None
    ) -> tuple[dict[str, list[StatRow]], list[StatRow]]:
        """Rows per VM, and their totals across VMs (empty with one VM).  While every VM's
        rows are the very rows of the last call (nothing moved), so are these."""
        keep = stat_filter or StatFilter()
        made = [(name, state.rows(vcpus), state.gone) for name, state in self.vms.items()]
        choice = (keep.pattern, None if vcpus is None else tuple(vcpus))
        last = self._last
        if (last is not None and last[0] == choice and len(last[1]) == len(made)
                and all(a[0] == b[0] and a[1] is b[1] and a[2] == b[2]
                        for a, b in zip(last[1], made, strict=True))):  # fmt: skip
            return last[2], last[3]
        per_vm = {name: [r for r in rows if keep(r.name)] for name, rows, _ in made}
        live = [rows for name, rows in per_vm.items() if self.vms[name].gone is None]
        totals = total_rows(live, self._totals) if len(self.vms) > 1 else []
        self._last = (choice, made, per_vm, totals)
        return per_vm, totals


class Changes:
    """Which VMs went, or came back, since the last call: each change said once (batch
    modes and ``record`` tell them on stderr, where a missing line would go unseen)."""

    def __init__(self) -> None:
        self._said: dict[str, str | None] = {}

    def __call__(self, watch: Watch) -> list[str]:
        out = []
        for name, state in watch.vms.items():
            if self._said.get(name) != state.gone:
                if state.gone is not None or name in self._said:
                    out.append(f"{name}: {state.gone or 'back'}")
                self._said[name] = state.gone
        return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError | VmstatsError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"
