"""The reference: the same families built with prometheus_client's own metric classes,
as a prometheus_client collector would, to hold the fast writer (:mod:`vmstats.exporter.
exposition`) to, byte for byte.  Kept with the tests: it is too slow to serve (most of a
second for 64 VMs), and nothing in vmstats runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from vmstats.exporter.mapping import Kind, MetricTable, metric_of
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.exporter.scrape import Scrape, vcpu_label, vmstats_families
from vmstats.stats.model import StatsValue

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
#: Prometheus' own float text (``+Inf``, ``1e-09``), for ``le`` labels.
_go_float = cast(Callable[[float], str], floatToGoString)


def _family(metric: StatMetric, labels: list[str]) -> Family:
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)
    if metric.kind is Kind.HISTOGRAM:
        return HistogramMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)
    return GaugeMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)


def _add(family: Family, metric: StatMetric, names: list[str], labels: list[str],
         value: StatsValue, values: Mapping[str, StatsValue]) -> None:  # fmt: skip
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
        named = dict(zip(names, labels, strict=True))
        family.samples.append(Sample(family.name + "_count", named, float(running), None))


def families(scrape: Scrape, table: MetricTable) -> Iterator[Metric]:
    """Every metric family of a scrape: the stats, then vmstats' own."""
    found: dict[str, Family] = {}
    for reading in scrape.readings:
        metrics = table.of(reading.schemas)
        for (provider, target, path), values in reading.sample.values.items():
            labels = [reading.name] if not path else [reading.name, vcpu_label(reading, path)]
            names = ["vm"] if not path else ["vm", "vcpu"]
            for name, value in values.items():
                metric = metric_of(metrics, provider, target, name, value)
                if metric.omit_zero and not value:
                    continue
                own = [k for k, _ in metric.label_pairs]
                family = found.get(metric.name)
                if family is None:
                    family = found[metric.name] = _family(metric, own + names)
                _add(family, metric, own + names,
                     [v for _, v in metric.label_pairs] + labels, value, values)  # fmt: skip
    yield from found.values()
    yield from vmstats_families(scrape)
