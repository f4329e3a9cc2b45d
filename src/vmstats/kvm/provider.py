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
Oddities (unknown flags, types, units, bases) are logged once per layout read.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmstats.kvm.binstats import (
    KvmStatsBase,
    KvmStatsType,
    KvmStatsUnit,
    StatsDescriptor,
    StatsLayout,
    StatsSource,
)
from vmstats.kvm.vmm import VmmProcess
from vmstats.stats.model import (
    StatsProvider,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)
from vmstats.stats.wire import (
    BOOLEAN,
    LIST,
    SCALAR,
    ResultMaker,
    ResultMemo,
    TemplateChoice,
)

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


def oddities(desc: StatsDescriptor) -> list[str]:
    """What is unusual about a descriptor, in words (for the log, once per layout)."""
    found = []
    if desc.unknown_bits:
        found.append(f"unknown flag bits {desc.unknown_bits:#x} ignored")
    if desc.type_bits not in _TYPES:
        found.append(f"unknown type {desc.type_bits:#x}: dropped")
    elif desc.unit_bits not in _UNITS:
        found.append(f"unknown unit {desc.unit_bits:#x}: dropped")
    elif desc.base_bits not in _BASES:
        found.append(f"unknown base {desc.base_bits:#x}: dropped")
    return found


def schema_value(desc: StatsDescriptor) -> StatsSchemaValue | None:
    """The schema entry QEMU makes of a descriptor, or None where QEMU drops it."""
    stats_type = _TYPES.get(desc.type_bits)
    if stats_type is None or desc.unit_bits not in _UNITS:
        return None
    base = None
    if desc.exponent:
        base = _BASES.get(desc.base_bits)
        if base is None:
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
    """What one layout yields, precomputed: wire templates and schema, in QEMU's order.

    Built once per layout for the whole process (:func:`plan_of`), which is also when
    the layout's oddities are logged: once, not once per VM or per read."""

    def __init__(self, layout: StatsLayout) -> None:
        for desc in layout.descriptors:
            for problem in oddities(desc):
                log.warning("KVM stat %r: %s", desc.name, problem)
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
        self.templates = TemplateChoice(self.entries)
        self._schemas: dict[StatsTarget, StatsSchema] = {}

    def schema_for(self, target: StatsTarget) -> StatsSchema:
        """The schema of ``target`` in this layout: the same object for every VM."""
        found = self._schemas.get(target)
        if found is None:
            found = self._schemas.setdefault(
                target, StatsSchema(StatsProvider.KVM, target, self.schema))  # fmt: skip
        return found


#: Each layout's plan, for the whole process: the VMs of a kernel share their layouts
#: (:class:`~vmstats.kvm.binstats.LayoutCache`), so 256 VMs keep one plan and one schema
#: per target (47 entries, where a plan per VM kept 12,000), and a layout's oddities are
#: logged once.  A plan goes with its layout.
_PLANS: weakref.WeakKeyDictionary[StatsLayout, _Plan] = weakref.WeakKeyDictionary()


def plan_of(layout: StatsLayout) -> _Plan:
    """The plan for ``layout`` (layouts hash by identity: one per distinct file shape)."""
    found = _PLANS.get(layout)
    if found is None:
        found = _PLANS.setdefault(layout, _Plan(layout))
    return found


@dataclass(frozen=True, slots=True)
class VcpuStatsFile:
    """A vCPU's stats fd and the QOM path it is reported under."""

    qom_path: str
    file: StatsSource


class KvmStatsProvider:
    """Serves ``vm`` and ``vcpu`` from stats fds opened once and kept.

    ``vcpus`` must be in vCPU index order (QEMU's CPU_FOREACH order).  The schema of the
    ``vcpu`` target is taken from the first vCPU, as QEMU does.
    """

    provider = StatsProvider.KVM

    def __init__(
        self,
        vm: StatsSource | None,
        vcpus: Sequence[VcpuStatsFile],
        vmm: VmmProcess | None = None,
    ) -> None:
        self.vm = vm
        self.vcpus = list(vcpus)
        self.vmm = vmm  # when given, every call first checks that the VM still runs
        self._results = ResultMaker(self.provider)
        self._memos: dict[StatsSource, ResultMemo] = {}  # per file: the data block's results

    def set_vcpus(self, vcpus: Iterable[VcpuStatsFile]) -> None:
        """Serve these vCPUs from now on (hot-plugged ones added, QOM paths learnt), in
        vCPU index order; what was kept for files no longer served is let go."""
        self.vcpus = list(vcpus)
        kept = {v.file for v in self.vcpus} | ({self.vm} if self.vm is not None else set())
        self._memos = {f: memo for f, memo in self._memos.items() if f in kept}

    def _result(
        self, file: StatsSource, names: Sequence[str] | None, qom_path: str | None
    ) -> StatsResult | None:
        template = plan_of(file.layout).templates.select(names, file.omitted)
        if not template.entries:
            return None
        memo = self._memos.get(file)
        if memo is None:
            memo = self._memos[file] = {}
        return self._results.result(memo, template, file.read_raw(), file.decode, qom_path)

    def stats(
        self,
        target: StatsTarget,
        names: Sequence[str] | None,
        targets: Sequence[str] | None,
    ) -> list[StatsResult]:
        if self.vmm is not None:
            self.vmm.check()
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
        """The same objects on every call while the layouts stay (callers cache by it)."""
        if self.vmm is not None:
            self.vmm.check()
        out = []
        if self.vm is not None:
            out.append(plan_of(self.vm.layout).schema_for(StatsTarget.VM))
        if self.vcpus:
            out.append(plan_of(self.vcpus[0].file.layout).schema_for(StatsTarget.VCPU))
        return out

    def close(self) -> None:
        """Close the stats fds this provider owns (and the VMM's pidfd)."""
        for file in [self.vm, *(v.file for v in self.vcpus)]:
            if file is not None:
                file.close()
        if self.vmm is not None:
            self.vmm.close()
