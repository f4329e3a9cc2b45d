"""The scrape text, written fast: the same bytes prometheus_client writes for the same
families (tests/exporter/test_exposition.py proves it, in both formats), in a fraction of
the time.

prometheus_client formats every sample of every scrape: for 64 VMs of 4 vCPUs (about
38,000 samples) that alone is most of a second.  Here each object's lines (one VM, or one
vCPU) are kept as text with the stats they were made from, and made again only when those
stats changed: most vCPUs of a fleet are idle, and an idle vCPU's text is reused whole.
A scrape then joins cached text per family.  The small ``vmstats_*`` families are written
by prometheus_client itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import cast

from prometheus_client import generate_latest as text_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vmstats.exporter.mapping import Kind, MetricTable, metric_of
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.exporter.scrape import Scrape, vcpu_label, vmstats_families
from vmstats.exporter.series import SeriesPolicy, summed
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import ObjectKey
from vmstats.stats.model import StatsValue

_go = cast(Callable[[float], str], floatToGoString)
_om_latest = cast(Callable[[Collector], bytes], openmetrics_latest)


def label_value(text: str) -> str:
    """A label value escaped as the exposition formats want it."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def header(metric: StatMetric, openmetrics: bool) -> str:
    """A family's ``# HELP``/``# TYPE`` (``# UNIT``) lines, as prometheus_client writes them."""
    if openmetrics:
        doc = label_value(metric.help)  # OpenMetrics escapes HELP as a label value
        text = f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.kind.value}\n"
        return text + (f"# UNIT {metric.name} {metric.unit}\n" if metric.unit else "")
    name = metric.name + "_total" if metric.kind is Kind.COUNTER else metric.name
    doc = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {metric.kind.value}\n"


@dataclass
class _Stat:
    """One stat's text in one object, and what it was made from."""

    metric: StatMetric
    size: int  # buckets, -1 for a scalar
    starts: list[str]  # each line up to its value (kept while the labels stay)
    value: object = None  # the value (and a histogram's sum) the text was made of
    text: str = ""


@dataclass
class _Rendered:
    """One object's text: the stats and labels it was made from, its lines per family,
    and per stat what lets a changed object remake only its changed stats (on a busy
    vCPU a few counters move; its histograms, most of its lines, seldom do)."""

    stats: Mapping[str, StatsValue]
    labels: str
    lines: list[tuple[StatMetric, str]]
    parts: dict[str, _Stat]


def number(value: float, metric: StatMetric | None = None) -> str:
    """A value (in ``metric``'s base units) as prometheus_client writes it (Go's float
    format); small whole numbers, most of a scrape, without the float round trip."""
    if type(value) is int and 0 <= value < 1_000_000 and (metric is None or metric.factor == 1):
        return f"{value}.0"  # what floatToGoString gives for them
    return _go(value if metric is None else metric.value(value))


class _Listed:
    """A registry-like object for prometheus_client's writers: these families, once."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class Exposition:
    """Writes scrapes; keeps each object's text between them."""

    def __init__(self, policy: SeriesPolicy | None = None) -> None:
        self.table = MetricTable()
        self._objects: dict[tuple[str, ObjectKey], _Rendered] = {}
        self._policy = policy or SeriesPolicy()

    @property
    def policy(self) -> SeriesPolicy:
        """Which series are exported (``--series``)."""
        return self._policy

    @policy.setter
    def policy(self, policy: SeriesPolicy) -> None:
        if policy != self._policy:
            self._policy = policy
            self._objects.clear()  # text made under the old policy

    def render(self, scrape: Scrape, openmetrics: bool = False) -> bytes:
        families: dict[str, tuple[StatMetric, list[str]]] = {}
        seen: set[tuple[str, ObjectKey]] = set()
        for reading in scrape.readings:
            vm = label_value(reading.name)
            values = self._per_vm(reading) if self._policy.per_vm else reading.sample.values
            for item, stats in values.items():
                key = (reading.name, item)
                seen.add(key)
                for metric, text in self._lines(key, reading, stats, vm):
                    found = families.get(metric.name)
                    if found is None:
                        families[metric.name] = (metric, [text])
                    else:
                        found[1].append(text)
        for gone in set(self._objects) - seen:
            del self._objects[gone]
        out = [part for metric, texts in families.values()
               for part in (header(metric, openmetrics), *texts)]  # fmt: skip
        tail = _Listed(list(vmstats_families(scrape)))
        if openmetrics:
            return "".join(out).encode() + _om_latest(tail)
        return "".join(out).encode() + text_latest(tail)

    def _per_vm(self, reading: VmReading) -> dict[ObjectKey, dict[str, StatsValue]]:
        """The reading with each target's vCPUs summed into one object of the VM."""
        metrics = self.table.of(reading.schemas)
        out: dict[ObjectKey, dict[str, StatsValue]] = {}
        merged: dict[ObjectKey, dict[str, list[StatsValue]]] = {}
        for (provider, target, qom_path), stats in reading.sample.values.items():
            if not qom_path:
                out[(provider, target, "")] = dict(stats)
                continue
            into = merged.setdefault((provider, target, ""), {})
            for name, value in stats.items():
                into.setdefault(name, []).append(value)
        for key, columns in merged.items():
            out[key] = {name: summed(metric_of(metrics, key[0], key[1], name, values[0]), values)
                        for name, values in columns.items()}  # fmt: skip
        return out

    def _lines(self, key: tuple[str, ObjectKey], reading: VmReading,
               stats: Mapping[str, StatsValue], vm: str
               ) -> list[tuple[StatMetric, str]]:  # fmt: skip
        """One object's text per family: made again only if its stats or labels changed."""
        provider, target, qom_path = key[1]
        if qom_path:
            labels = f'vcpu="{label_value(vcpu_label(reading, qom_path))}",vm="{vm}"'
        else:
            labels = f'vm="{vm}"'
        cached = self._objects.get(key)
        parts: dict[str, _Stat] = {}
        if cached is not None and cached.labels == labels:
            if cached.stats is stats or cached.stats == stats:
                return cached.lines
            parts = cached.parts
        metrics = self.table.of(reading.schemas)
        lines = []
        for name, value in stats.items():  # provider order, buckets lowest first
            metric = metric_of(metrics, provider, target, name, value)
            if not self._policy.keeps(metric):
                continue
            size = len(value) if isinstance(value, list) else -1
            part = parts.get(name)
            if part is None or part.metric is not metric or part.size != size:
                part = parts[name] = _Stat(metric, size, self._starts(metric, labels, size))
            total = stats.get(metric.sum_of.name) if metric.sum_of is not None else None
            made_of = (value, total) if size >= 0 else value
            if part.value != made_of or not part.text:
                part.value, part.text = made_of, self._text(metric, part.starts, value, total)
            lines.append((metric, part.text))
        self._objects[key] = _Rendered(stats, labels, lines, parts)
        return lines

    def _starts(self, metric: StatMetric, labels: str, buckets: int) -> list[str]:
        """Each line's text up to its value: one for a scalar; for a histogram its buckets,
        then ``_count`` and ``_sum``."""
        if buckets < 0:
            suffix = "_total" if metric.kind is Kind.COUNTER else ""
            return [f"{metric.name}{suffix}{{{labels}}} "]
        name = metric.name
        starts = [f'{name}_bucket{{le="{_go(b)}",{labels}}} ' for b in metric.le(buckets)]
        return [*starts, f"{name}_count{{{labels}}} ", f"{name}_sum{{{labels}}} "]

    @staticmethod
    def _text(metric: StatMetric, starts: list[str], value: StatsValue,
              total: StatsValue | None) -> str:  # fmt: skip
        if not isinstance(value, list):
            return f"{starts[0]}{number(value, metric)}\n"
        counts = list(accumulate(value))  # cumulative, from the lowest bucket
        count = counts[-1] if counts else 0
        if count < 1_000_000:  # the largest count: all are small whole numbers
            parts = [f"{start}{n}.0\n" for start, n in zip(starts, counts, strict=False)]
        else:
            parts = [f"{start}{number(n)}\n" for start, n in zip(starts, counts, strict=False)]
        parts.append(f"{starts[-2]}{number(count)}\n")
        if isinstance(total, int | bool):
            parts.append(f"{starts[-1]}{number(total, metric)}\n")
        return "".join(parts)
