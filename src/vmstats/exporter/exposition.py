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

from collections.abc import Callable
from typing import cast

from prometheus_client import generate_latest as text_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vmstats.exporter.collector import MetricTable, Scrape, metric_of, vmstats_families
from vmstats.exporter.mapping import Kind
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.exporter.reading import ObjectStats, VmReading
from vmstats.stats.model import StatsValue

_go = cast(Callable[[float], str], floatToGoString)
_om_latest = cast(Callable[[Collector], bytes], openmetrics_latest)


def label_value(text: str) -> str:
    """A label value escaped as the exposition formats want it."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def header(metric: StatMetric, openmetrics: bool) -> str:
    """A family's ``# HELP``/``# TYPE`` (``# UNIT``) lines, as prometheus_client writes them."""
    if openmetrics:
        doc = metric.help.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        text = f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.kind.value}\n"
        return text + (f"# UNIT {metric.name} {metric.unit}\n" if metric.unit else "")
    name = metric.name + "_total" if metric.kind is Kind.COUNTER else metric.name
    doc = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {metric.kind.value}\n"


#: One object's text: the stats and labels it was made from, and its lines per family.
_Rendered = tuple[list[tuple[str, StatsValue]], str, list[tuple[StatMetric, str]]]


class _Listed:
    """A registry-like object for prometheus_client's writers: these families, once."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class Exposition:
    """Writes scrapes; keeps each object's text between them."""

    def __init__(self) -> None:
        self.table = MetricTable()
        self._objects: dict[tuple[str, str, str], _Rendered] = {}
        self._le: dict[tuple[int, int], list[str]] = {}

    def render(self, scrape: Scrape, openmetrics: bool = False) -> bytes:
        families: dict[str, tuple[StatMetric, list[str]]] = {}
        seen: set[tuple[str, str, str]] = set()
        for reading in scrape.readings:
            vm = label_value(reading.name)
            for item in reading.objects:
                key = (reading.name, item.target, item.qom_path)
                seen.add(key)
                for metric, text in self._lines(key, reading, item, vm):
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

    def _lines(self, key: tuple[str, str, str], reading: VmReading, item: ObjectStats,
               vm: str) -> list[tuple[StatMetric, str]]:  # fmt: skip
        """One object's text per family: made again only if its stats or labels changed."""
        if item.qom_path:
            number = reading.vcpus.get(item.qom_path)
            vcpu = label_value(str(number) if number is not None else item.qom_path)
            labels = f'vcpu="{vcpu}",vm="{vm}"'
        else:
            labels = f'vm="{vm}"'
        cached = self._objects.get(key)
        if cached is not None and cached[1] == labels and cached[0] == item.stats:
            return cached[2]
        metrics = self.table.of(reading.schemas)
        values = {name: value for name, value in item.stats}
        lines = []
        for name, value in reversed(item.stats):  # provider order
            metric = metric_of(metrics, item.provider, item.target, name, value)
            lines.append((metric, self._text(metric, labels, value, values)))
        self._objects[key] = (item.stats, labels, lines)
        return lines

    def _text(self, metric: StatMetric, labels: str, value: StatsValue,
              values: dict[str, StatsValue]) -> str:  # fmt: skip
        if not isinstance(value, list):
            suffix = "_total" if metric.kind is Kind.COUNTER else ""
            return f"{metric.name}{suffix}{{{labels}}} {_go(metric.value(value))}\n"
        buckets = value[::-1]  # lowest first
        le = self._le.get((id(metric), len(buckets)))
        if le is None:
            le = self._le[(id(metric), len(buckets))] = [_go(b) for b in metric.le(len(buckets))]
        parts = []
        running = 0
        name = metric.name
        for bound, count in zip(le, buckets, strict=True):
            running += count
            parts.append(f'{name}_bucket{{le="{bound}",{labels}}} {_go(running)}\n')
        parts.append(f"{name}_count{{{labels}}} {_go(running)}\n")
        total = values.get(metric.sum_of.name) if metric.sum_of is not None else None
        if isinstance(total, int | bool):
            parts.append(f"{name}_sum{{{labels}}} {_go(metric.value(total))}\n")
        return "".join(parts)
