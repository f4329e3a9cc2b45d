"""The ``kvm`` stats provider: targets ``vm`` and ``vcpu`` from a set of open stats fds.

It maps the kernel's descriptors exactly as QEMU's KVM provider does (``accel/kvm``):

- types and units QEMU does not know drop the stat from schema and values;
- a stat with an unknown base is dropped from the values, and from the schema only when
  its exponent is non-zero (QEMU's inconsistency, kept for identical replies);
- ``base`` is given only for a non-zero exponent, ``bucket-size`` only for linear
  histograms; flag bits outside type/unit/base are ignored;
- a BOOLEAN unit gives a JSON bool from the first u64 (before size is looked at), size 1
  gives a scalar, anything larger a list in *reverse* bucket order;
- stats come in reverse descriptor order, since QEMU prepends them.

Unlike QEMU 7.2 the fds are opened once and kept (the QEMU >= 8.1 design), and a query is
a ``pread`` per fd from the calling thread: no vCPU is kicked, signalled or stopped.
Oddities (unknown flags) are logged once per stat name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from vmstats.kvm.binstats import (
    KvmStatsBase,
    KvmStatsType,
    KvmStatsUnit,
    StatsDescriptor,
    StatsFile,
    StatsLayout,
)
from vmstats.stats.model import (
    StatsProvider,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)
from vmstats.stats.wire import BOOLEAN, LIST, SCALAR, EncodedStats, StatsTemplate

log = logging.getLogger(__name__)

_TYPES: dict[int, StatsType] = {
    KvmStatsType.CUMULATIVE: StatsType.CUMULATIVE,
    KvmStatsType.INSTANT: StatsType.INSTANT,
    KvmStatsType.PEAK: StatsType.PEAK,
    KvmStatsType.LINEAR_HIST: StatsType.LINEAR_HISTOGRAM,
    KvmStatsType.LOG_HIST: StatsType.LOG2_HISTOGRAM,
}
_UNITS: dict[int, StatsUnit | None] = {
    KvmStatsUnit.NONE: None,
    KvmStatsUnit.BYTES: StatsUnit.BYTES,
    KvmStatsUnit.SECONDS: StatsUnit.SECONDS,
    KvmStatsUnit.CYCLES: StatsUnit.CYCLES,
    KvmStatsUnit.BOOLEAN: StatsUnit.BOOLEAN,
}
_BASES: dict[int, int] = {KvmStatsBase.POW10: 10, KvmStatsBase.POW2: 2}

_warned: set[tuple[str, str]] = set()


def _warn_once(name: str, problem: str) -> None:
    if (name, problem) not in _warned:
        _warned.add((name, problem))
        log.warning("KVM stat %r: %s", name, problem)


def schema_value(desc: StatsDescriptor) -> StatsSchemaValue | None:
    """The schema entry QEMU makes of a descriptor, or None where QEMU drops it."""
    if desc.unknown_bits:
        _warn_once(desc.name, f"unknown flag bits {desc.unknown_bits:#x} ignored")
    stats_type = _TYPES.get(desc.type_bits)
    if stats_type is None:
        _warn_once(desc.name, f"unknown type {desc.type_bits:#x}: dropped")
        return None
    if desc.unit_bits not in _UNITS:
        _warn_once(desc.name, f"unknown unit {desc.unit_bits:#x}: dropped")
        return None
    base = None
    if desc.exponent:
        base = _BASES.get(desc.base_bits)
        if base is None:
            _warn_once(desc.name, f"unknown base {desc.base_bits:#x}: dropped")
            return None
    return StatsSchemaValue(
        name=desc.name,
        type=stats_type,
        unit=_UNITS[desc.unit_bits],
        base=base,
        exponent=desc.exponent,
        bucket_size=desc.bucket_size if stats_type == StatsType.LINEAR_HISTOGRAM else None,
    )


def _has_value(desc: StatsDescriptor) -> bool:
    """QEMU serves a value only for known type, unit *and* base, whatever the exponent."""
    return desc.type_bits in _TYPES and desc.unit_bits in _UNITS and desc.base_bits in _BASES


class _Plan:
    """What one layout yields, precomputed: wire templates and schema, in QEMU's order."""

    def __init__(self, layout: StatsLayout) -> None:
        wire_order = layout.descriptors[::-1]
        self.entries = tuple(
            (
                d.name,
                BOOLEAN if d.unit_bits == KvmStatsUnit.BOOLEAN else SCALAR if d.size == 1 else LIST,
                d.index,
                d.index + d.size,
            )
            for d in wire_order
            if _has_value(d)
        )
        self.schema = tuple(v for v in map(schema_value, wire_order) if v is not None)
        self.all = StatsTemplate(self.entries)
        self._filtered: dict[tuple[str, ...], StatsTemplate] = {}

    def select(self, names: Sequence[str] | None) -> StatsTemplate:
        """The template for the stats named in ``names`` (all for None), in wire order."""
        if names is None:
            return self.all
        key = tuple(names)
        found = self._filtered.get(key)
        if found is None:
            wanted = set(names)
            found = StatsTemplate([e for e in self.entries if e[0] in wanted])
            if len(self._filtered) < 256:
                self._filtered[key] = found
        return found


_plans: dict[int, tuple[StatsLayout, _Plan]] = {}


def plan_for(layout: StatsLayout) -> _Plan:
    cached = _plans.get(id(layout))
    if cached is None or cached[0] is not layout:
        cached = _plans[id(layout)] = (layout, _Plan(layout))
    return cached[1]


@dataclass(frozen=True, slots=True)
class VcpuStatsFile:
    """A vCPU's stats fd and the QOM path it is reported under."""

    qom_path: str
    file: StatsFile


class KvmStatsProvider:
    """Serves ``vm`` and ``vcpu`` from stats fds opened once and kept.

    ``vcpus`` must be in vCPU index order (QEMU's CPU_FOREACH order).  The schema of the
    ``vcpu`` target is taken from the first vCPU, as QEMU does.
    """

    provider = StatsProvider.KVM

    def __init__(self, vm: StatsFile | None, vcpus: Sequence[VcpuStatsFile]) -> None:
        self.vm = vm
        self.vcpus = list(vcpus)

    def _result(
        self, file: StatsFile, names: Sequence[str] | None, qom_path: str | None
    ) -> StatsResult | None:
        template = plan_for(file.layout).select(names)
        if not template.entries:
            return None
        return StatsResult(self.provider, EncodedStats(template, file.read()), qom_path)

    def stats(
        self,
        target: StatsTarget,
        names: Sequence[str] | None,
        targets: Sequence[str] | None,
    ) -> list[StatsResult]:
        out: list[StatsResult] = []
        if target == StatsTarget.VM and self.vm is not None:
            result = self._result(self.vm, names, None)
            if result is not None:
                out.append(result)
        elif target == StatsTarget.VCPU:
            wanted = None if targets is None else set(targets)
            for vcpu in self.vcpus:
                if wanted is not None and vcpu.qom_path not in wanted:
                    continue
                result = self._result(vcpu.file, names, vcpu.qom_path)
                if result is not None:
                    out.append(result)
        return out

    def schemas(self) -> list[StatsSchema]:
        out = []
        if self.vm is not None:
            out.append(StatsSchema(self.provider, StatsTarget.VM, plan_for(self.vm.layout).schema))
        if self.vcpus:
            layout = self.vcpus[0].file.layout
            out.append(StatsSchema(self.provider, StatsTarget.VCPU, plan_for(layout).schema))
        return out

    def close(self) -> None:
        """Close the stats fds this provider owns."""
        for file in [self.vm, *(v.file for v in self.vcpus)]:
            if file is not None:
                file.close()
