"""The prometheus_client collector: what one scrape found, as metric families.

Small on purpose, as prometheus_client's own collectors are: the reading is done before
(:mod:`.reading`), the naming rules are :mod:`.mapping`; this only lays the values out.
Labels are ``vm`` and, for vCPU stats, ``vcpu`` (the vCPU number): nothing of high
cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from vmstats.exporter.mapping import Kind, metric_for
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.exporter.reading import VmReading
from vmstats.stats.model import StatsSchema, StatsSchemaValue, StatsType, StatsValue

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
#: Prometheus' own float text (``+Inf``, ``1e-09``), for ``le`` labels.
_go_float = cast(Callable[[float], str], floatToGoString)
#: (provider, target, stat name) -> its metric
Table = dict[tuple[str, str, str], StatMetric]


@dataclass(frozen=True)
class Scrape:
    """One scrape: the VMs read, the VMs that could not be (name -> why), its duration."""

    readings: Sequence[VmReading]
    down: dict[str, str]
    duration: float


class MetricTable:
    """The metric of every stat of a schema list, made once per list (schemas change only
    with the kernel's descriptors)."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[list[StatsSchema], Table]] = {}

    def of(self, schemas: list[StatsSchema]) -> Table:
        seen = self._tables.get(id(schemas))
        if seen is not None and seen[0] is schemas:
            return seen[1]
        table: Table = {}
        taken: set[str] = set()
        for schema in schemas:
            prefix = f"{schema.provider.value}_{schema.target.value}"
            for stat in schema.stats:
                key = (schema.provider.value, schema.target.value, stat.name)
                metric = metric_for(prefix, stat, schema.stats)
                if metric.name in taken:  # never merge two stats: the full name tells them apart
                    metric = metric_for(prefix, stat, schema.stats, full_name=True)
                taken.add(metric.name)
                table[key] = metric
        if len(self._tables) > 256:
            self._tables.clear()
        self._tables[id(schemas)] = (schemas, table)
        return table


def metric_of(table: Table, provider: str, target: str, name: str,
              value: StatsValue) -> StatMetric:  # fmt: skip
    """The metric of a stat; for one the schemas do not describe, or whose value is not of
    its schema's shape (a server's mistake), a metric by the value's shape."""
    metric = table.get((provider, target, name))
    if metric is None or (metric.kind is Kind.HISTOGRAM) != isinstance(value, list):
        return unknown_metric(provider, target, name, value)
    return metric


def unknown_metric(provider: str, target: str, name: str, value: StatsValue) -> StatMetric:
    """A stat the schemas do not describe (it should not happen): a gauge, never dropped."""
    kind = StatsType.LOG2_HISTOGRAM if isinstance(value, list) else StatsType.INSTANT
    return metric_for(f"{provider}_{target}", StatsSchemaValue(name, kind))


def _family(metric: StatMetric, labels: list[str]) -> Family:
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)
    if metric.kind is Kind.HISTOGRAM:
        return HistogramMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)
    return GaugeMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)


def _add(family: Family, metric: StatMetric, labels: list[str], value: StatsValue,
         values: Mapping[str, StatsValue]) -> None:  # fmt: skip
    if not isinstance(value, list):
        assert not isinstance(family, HistogramMetricFamily)
        family.add_metric(labels, metric.value(value))
        return
    assert isinstance(family, HistogramMetricFamily)
    bounds = metric.le(len(value))
    running = 0
    buckets = []
    for bound, count in zip(bounds, value, strict=True):
        running += count
        buckets.append((_go_float(bound), float(running)))
    total = values.get(metric.sum_of.name) if metric.sum_of is not None else None
    if isinstance(total, int | bool):
        family.add_metric(labels, buckets, metric.value(total))
    else:  # no cumulative stat to sum: the count alone (docs/metrics.md)
        family.add_metric(labels, buckets, None)
        named = dict(zip(family._labelnames, labels, strict=True))
        family.samples.append(Sample(family.name + "_count", named, float(running), None))


def families(scrape: Scrape, table: MetricTable) -> Iterator[Metric]:
    """Every metric family of a scrape: the stats, then vmstats' own."""
    found: dict[str, Family] = {}
    for reading in scrape.readings:
        metrics = table.of(reading.schemas)
        for item in reading.objects:
            provider, target, path = item.provider, item.target, item.qom_path
            labels = [reading.name] if not path else [reading.name, vcpu_label(reading, path)]
            names = ["vm"] if not path else ["vm", "vcpu"]
            values = {name: natural(value) for name, value in reversed(item.stats)}
            for name, value in values.items():
                metric = metric_of(metrics, provider, target, name, value)
                family = found.get(metric.name)
                if family is None:
                    family = found[metric.name] = _family(metric, names)
                _add(family, metric, labels, value, values)
    yield from found.values()
    yield from vmstats_families(scrape)


def natural(value: StatsValue) -> StatsValue:
    """A value with its histogram buckets lowest first (the wire has them reversed)."""
    return value[::-1] if isinstance(value, list) else value


def vcpu_label(reading: VmReading, path: str) -> str:
    """A vCPU's ``vcpu`` label: its number, or its QOM path if the VM did not say."""
    number = reading.vcpus.get(path)
    return str(number) if number is not None else path


def vmstats_families(scrape: Scrape) -> Iterable[Metric]:
    """``vmstats_up``, ``vmstats_vm_info`` and ``vmstats_scrape_duration_seconds``."""
    up = GaugeMetricFamily("vmstats_up", "1 if the VM could be read in this scrape, else 0",
                           labels=["vm"])  # fmt: skip
    info = InfoMetricFamily("vmstats_vm", "the VM: its VMM's pid, QEMU version and where "
                            "its stats come from", labels=["vm"])  # fmt: skip
    for reading in scrape.readings:
        up.add_metric([reading.name], 1)
        info.add_metric([reading.name], reading.info)
    for name in scrape.down:
        up.add_metric([name], 0)
    duration = GaugeMetricFamily("vmstats_scrape_duration_seconds",
                                 "seconds this scrape took to read every VM", unit="seconds",
                                 value=scrape.duration)  # fmt: skip
    return [up, info, duration]
