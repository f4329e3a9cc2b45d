"""How a KVM stat becomes a Prometheus metric: one rule for every stat, known or not.

The kernel describes each stat (type, unit, base, exponent, bucket size); the metric is
derived from that description alone, so a stat a newer kernel adds is exported by the same
rules and never dropped (docs/metrics.md has the table):

- name: ``<provider>_<target>_<stat>``, with the stat's unit suffix (``_ns``) taken off
  and the base unit put on (``_seconds``, ``_bytes``, ``_cycles``); cumulative stats are
  counters (``_total``), instant and peak stats gauges, booleans 0/1 gauges, histograms
  keep their ``_hist`` (``kvm_vcpu_halt_wait_hist_seconds``: OpenMetrics forbids a
  histogram of the counter's name ``kvm_vcpu_halt_wait_seconds``); two stats that would
  share a name (no kernel has them) get their full kernel names instead;
- values in base units: ``value * base**exponent`` (nanoseconds to seconds);
- histograms (log2 and linear) with cumulative buckets whose ``le`` is the highest value
  a bucket holds (the values are integers: log2 bucket N holds ``2**(N-1) .. 2**N - 1``),
  in base units, the last bucket ``+Inf``; ``_sum`` from the cumulative stat of the same
  measure and unit (``halt_wait_hist`` and ``halt_wait_ns``), and only ``_count`` where
  the kernel has none.

The ``tracepoints`` provider's stats (``kvm_userspace_exit(IO)``) are one family per
kind, told apart by labels, as a counter of events by reason is in Prometheus:
``kvm_vcpu_exit_reasons_total{event="kvm_userspace_exit",reason="IO"}``, and an event
counted whole ``kvm_vcpu_tracepoint_events_total{event="kvm_pio"}``; a reason at 0 (most
never occur: other architectures', other ISAs') is left out until its first event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from vmstats.stats.model import (
    StatsProvider,
    StatsSchema,
    StatsSchemaValue,
    StatsType,
    StatsUnit,
    StatsValue,
)
from vmstats.stats.units import scale

#: Metric name suffixes of each unit's base unit (Prometheus names carry base units).
UNIT_SUFFIX = {StatsUnit.SECONDS: "seconds", StatsUnit.BYTES: "bytes", StatsUnit.CYCLES: "cycles"}
#: Suffixes kernel stat names carry for their unit, taken off before the base unit is added.
_NAME_UNITS = re.compile(r"_(ns|us|ms|s|sec|secs|seconds|bytes|cycles)$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_EVENT_REASON = re.compile(r"^(\w+)\((.+)\)$")


class Kind(Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Metric:
    """The metric one stat becomes.  ``name`` is the family name (a counter's samples get
    ``_total``); ``factor`` is base**exponent (what :meth:`value` applies); ``sum_of`` names
    the cumulative stat that gives a histogram's ``_sum``."""

    name: str
    kind: Kind
    help: str
    factor: float
    stat: StatsSchemaValue
    sum_of: StatsSchemaValue | None = None
    unit: str = ""
    #: Labels of its own: their names sort before ``vcpu`` and ``vm``, which follow (the
    #: formats write labels sorted).
    label_pairs: tuple[tuple[str, str], ...] = ()
    #: A sample at 0 is left out: of the reasons a kernel names, most never occur (other
    #: architectures', other ISAs'); each appears at its first event.
    omit_zero: bool = False

    @property
    def labels(self) -> str:
        """Its own labels as the text that starts a sample's (``event="kvm_exit",``)."""
        return "".join(f'{k}="{label_value(v)}",' for k, v in self.label_pairs)

    def value(self, raw: float) -> float:
        """A raw value in base units."""
        return scale(raw, self.stat)

    def le(self, buckets: int) -> list[float]:
        """Each bucket's ``le`` bound in base units, lowest first; the last is +Inf."""
        return upper_bounds(self.stat, buckets)


def stem(name: str) -> str:
    """A stat's name without its unit suffix: ``halt_wait_ns`` is ``halt_wait``."""
    return _NAME_UNITS.sub("", name) or name


def measured(name: str) -> str:
    """What a stat measures: ``halt_wait_ns`` and ``halt_wait_hist`` both ``halt_wait``."""
    return stem(name.removesuffix("_hist")) or name


def upper_bounds(stat: StatsSchemaValue, buckets: int) -> list[float]:
    """The highest value each bucket holds (integers), in base units; +Inf for the last.

    Linear bucket N (0-based) holds ``size*N .. size*(N+1) - 1``; log2 bucket 0 holds 0
    and bucket N holds ``2**(N-1) .. 2**N - 1`` (the kernel's ABI).
    """
    bounds = []
    for index in range(buckets - 1):
        if stat.type is StatsType.LINEAR_HISTOGRAM:
            high = (stat.bucket_size or 1) * (index + 1) - 1
        else:
            high = 2**index - 1
        bounds.append(scale(high, stat))
    return [*bounds, float("inf")]


def metric_for(prefix: str, stat: StatsSchemaValue, siblings: Sequence[StatsSchemaValue] = (),
               full_name: bool = False) -> Metric:  # fmt: skip
    """The metric of ``stat`` under ``prefix`` (``kvm_vcpu``); ``siblings`` are the other
    stats of the same target (where a histogram finds its ``_sum``).  ``full_name``: the
    kernel's whole name, unit suffix and all (to tell apart two that clash)."""
    unit = UNIT_SUFFIX.get(stat.unit) if stat.unit is not None else None
    base = _UNSAFE.sub("_", stat.name if full_name else stem(stat.name))
    name = f"{prefix}_{base}"
    if unit and not name.endswith(f"_{unit}"):
        name += f"_{unit}"
    factor = scale(1, stat)
    described = f"KVM {prefix.rsplit('_', 1)[-1]} stat {stat.name} ({stat.type.value}"
    described += f", {stat.unit.value}" if stat.unit is not None else ""
    described += f", x{factor:g} to base units)" if factor != 1 else ")"
    if stat.type.is_histogram:
        sums = (s for s in siblings if s.type is StatsType.CUMULATIVE and s.unit == stat.unit)
        total = next((s for s in sums if measured(s.name) == measured(stat.name)), None)
        return Metric(name, Kind.HISTOGRAM, described, factor, stat, total, unit or "")
    if stat.type is StatsType.CUMULATIVE:
        return Metric(name.removesuffix("_total"), Kind.COUNTER, described, factor, stat,
                      unit=unit or "")  # fmt: skip
    return Metric(name, Kind.GAUGE, described, factor, stat, unit=unit or "")


def tracepoint_metric(target: str, stat: StatsSchemaValue) -> Metric:
    """The metric of a ``tracepoints`` stat: ``EVENT(REASON)`` a sample of
    ``kvm_<target>_exit_reasons``, ``EVENT`` one of ``kvm_<target>_tracepoint_events``."""
    match = _EVENT_REASON.match(stat.name)
    pairs: tuple[tuple[str, str], ...]
    if match is not None:
        name, pairs = f"kvm_{target}_exit_reasons", (("event", match[1]), ("reason", match[2]))
        described = f"KVM {target} exits counted by the tracepoint of each, by its reason"
    else:
        name, pairs = f"kvm_{target}_tracepoint_events", (("event", stat.name),)
        described = f"KVM {target} tracepoint events counted, by event"
    return Metric(name, Kind.COUNTER, described, 1.0, stat, label_pairs=pairs,
                  omit_zero=True)  # fmt: skip


def label_value(text: str) -> str:
    """A label value escaped as the exposition formats want it."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


#: (provider, target, stat name) -> its metric
Table = dict[tuple[str, str, str], Metric]


class MetricTable:
    """The metric of every stat of a schema list, made once per distinct list (schemas
    change only with the kernel's descriptors, and every VM of a host has the same: one
    table, and the same :class:`Metric` objects, serve them all)."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[list[StatsSchema], Table]] = {}
        self._by_content: dict[tuple[object, ...], Table] = {}

    def of(self, schemas: list[StatsSchema]) -> Table:
        seen = self._tables.get(id(schemas))
        if seen is not None and seen[0] is schemas:
            return seen[1]
        content = tuple((s.provider, s.target, tuple(s.stats)) for s in schemas)
        table = self._by_content.get(content)
        if table is None:
            table = self._build(schemas)
            if len(self._by_content) > 64:
                self._by_content.clear()
            self._by_content[content] = table
        if len(self._tables) > 4096:
            self._tables.clear()
        self._tables[id(schemas)] = (schemas, table)
        return table

    @staticmethod
    def _build(schemas: list[StatsSchema]) -> Table:
        table: Table = {}
        taken: set[str] = set()
        for schema in schemas:
            prefix = f"{schema.provider.value}_{schema.target.value}"
            for stat in schema.stats:
                key = (schema.provider.value, schema.target.value, stat.name)
                if schema.provider is StatsProvider.TRACEPOINTS and not stat.type.is_histogram:
                    table[key] = tracepoint_metric(schema.target.value, stat)
                    continue
                metric = metric_for(prefix, stat, schema.stats)
                if metric.name in taken:  # never merge two stats: the full name tells them apart
                    metric = metric_for(prefix, stat, schema.stats, full_name=True)
                taken.add(metric.name)
                table[key] = metric
        return table


def metric_of(table: Table, provider: str, target: str, name: str,
              value: StatsValue) -> Metric:  # fmt: skip
    """The metric of a stat; for one the schemas do not describe, or whose value is not of
    its schema's shape (a server's mistake), a metric by the value's shape."""
    metric = table.get((provider, target, name))
    if metric is None or (metric.kind is Kind.HISTOGRAM) != isinstance(value, list):
        return unknown_metric(provider, target, name, value)
    return metric


def unknown_metric(provider: str, target: str, name: str, value: StatsValue) -> Metric:
    """A stat the schemas do not describe (it should not happen): a gauge, never dropped."""
    kind = StatsType.LOG2_HISTOGRAM if isinstance(value, list) else StatsType.INSTANT
    return metric_for(f"{provider}_{target}", StatsSchemaValue(name, kind))
