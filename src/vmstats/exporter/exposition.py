"""The scrape text, written fast: the same bytes prometheus_client writes for the same
families (tests/exporter/test_exposition.py proves it, in both formats), in a fraction of
the time.

prometheus_client formats every sample of every scrape: for 64 VMs of 4 vCPUs (about
38,000 samples) that alone is most of a second.  Here each object's lines (one VM, or one
vCPU) are kept as text with the stats they were made from, and made again only when those
stats changed (then only the stats that moved, by a plan kept per object); each VM's text
per family is kept as bytes and joined again only when one of its objects changed.  A
scrape of a host whose VMs stand still then joins a few blocks per VM.  The ``vmstats_*``
families are written by prometheus_client itself, ``vmstats_up`` and ``vmstats_vm_info``
only when the VMs or what they say changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import TypeVar, cast

from prometheus_client import generate_latest as text_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vmstats.exporter.mapping import Kind, MetricTable, label_value, metric_of
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.exporter.scrape import Scrape, duration_family, vcpu_label, vm_families
from vmstats.exporter.series import SeriesPolicy, summed
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import ObjectKey, same_objects
from vmstats.stats.model import StatsValue

_go = cast(Callable[[float], str], floatToGoString)
_om_latest = cast(Callable[[Collector], bytes], openmetrics_latest)


def header(metric: StatMetric, openmetrics: bool) -> str:
    """A family's ``# HELP``/``# TYPE`` (``# UNIT``) lines, as prometheus_client writes them."""
    if openmetrics:
        doc = label_value(metric.help)  # OpenMetrics escapes HELP as a label value
        text = f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.kind.value}\n"
        return text + (f"# UNIT {metric.name} {metric.unit}\n" if metric.unit else "")
    name = metric.name + "_total" if metric.kind is Kind.COUNTER else metric.name
    doc = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {metric.kind.value}\n"


@dataclass(slots=True)
class _Stat:
    """One stat's text in one object, and what it was made from.  A host's exposition
    keeps about 100,000 of these, and Python's cyclic collector walks every container
    that lives on (a full collection was 190 ms at 256 VMs, every other query waiting):
    so no list, tuple or pair per stat that holds a container (a tuple of strings the
    collector leaves alone)."""

    metric: StatMetric
    size: int  # buckets, -1 for a scalar
    starts: tuple[str, ...]  # each line up to its value (kept while the labels stay)
    value: object = None  # the value the text was made of
    total: object = None  # and a histogram's sum
    text: str = ""


@dataclass
class _Rendered:
    """One object's text: the stats and labels it was made from, its lines per family,
    and per stat what lets a changed object remake only its changed stats (on a busy
    vCPU a few counters move; its histograms, most of its lines, seldom do)."""

    stats: Mapping[str, StatsValue]
    labels: str
    lines: list[_Stat]  # the stats whose lines it has, in order (each its metric and text)
    parts: dict[str, _Stat]
    table: object = None  # the metric table the plan was made with
    #: per stat in the object's order, its name and its part (None: not exported):
    #: while the names and the table stay, a changed object is remade without a lookup
    #: per stat (two lists, not a pair per stat: see :class:`_Stat`)
    plan: tuple[list[str], list[_Stat | None]] | None = None


def number(value: float, metric: StatMetric | None = None) -> str:
    """A value (in ``metric``'s base units) as prometheus_client writes it (Go's float
    format); small whole numbers, most of a scrape, without the float round trip."""
    if type(value) is int and 0 <= value < 1_000_000 and (metric is None or metric.factor == 1):
        return f"{value}.0"  # what floatToGoString gives for them
    return _go(value if metric is None else metric.value(value))


T = TypeVar("T")


def by_family(lines: Iterable[tuple[StatMetric, T]]) -> dict[str, tuple[StatMetric, list[T]]]:
    """Text by family name, in the order families first come (a page lists each family
    once, its samples together), each family's texts in their order."""
    out: dict[str, tuple[StatMetric, list[T]]] = {}
    for metric, text in lines:
        found = out.get(metric.name)
        if found is None:
            out[metric.name] = (metric, [text])
        else:
            found[1].append(text)
    return out


@dataclass
class _VmText:
    """One VM's text per family, the objects' lines it was joined from, and what of the
    reading they were made from."""

    lines: list[list[_Stat]]
    blocks: dict[str, tuple[StatMetric, bytes]]
    values: object = None
    schemas: object = None
    vcpus: Mapping[str, int] | None = None

    def made_of(self, reading: VmReading) -> bool:
        """Is ``reading`` what the text was made from: the very values and schemas (a
        reader gives the same objects while nothing changed), the same vCPU numbers?"""
        return (reading.sample.values is self.values and reading.schemas is self.schemas
                and reading.vcpus == self.vcpus)  # fmt: skip


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
        #: each VM's blocks, the objects' lines they were made of, and the reading's
        #: values, schemas and vCPU numbers they were made from
        self._vms: dict[str, _VmText] = {}
        self._policy = policy or SeriesPolicy()
        self._bounds: dict[tuple[StatMetric, int], list[str]] = {}  # le texts
        self._tails: dict[bool, tuple[object, bytes]] = {}  # vmstats_up and _info, by format
        #: by format, the VMs' blocks of the last page and the page's text made of them
        self._pages: dict[bool, tuple[list[dict[str, tuple[StatMetric, bytes]]], bytes]] = {}
        #: per VM, its objects' values and their sums (``vcpus = "vm"``)
        self._sums: dict[str, tuple[list[Mapping[str, StatsValue]],
                                    dict[ObjectKey, dict[str, StatsValue]]]] = {}  # fmt: skip

    @property
    def policy(self) -> SeriesPolicy:
        """Which series are exported (``--series``)."""
        return self._policy

    @policy.setter
    def policy(self, policy: SeriesPolicy) -> None:
        if policy != self._policy:
            self._policy = policy
            self._objects.clear()  # text made under the old policy
            self._vms.clear()
            self._pages.clear()

    def render(self, scrape: Scrape, openmetrics: bool = False) -> bytes:
        return b"".join(self.render_parts(scrape, openmetrics))

    def render_parts(self, scrape: Scrape, openmetrics: bool = False,
                     blocks: list[dict[str, tuple[StatMetric, bytes]]] | None = None,
                     ) -> tuple[bytes, bytes]:  # fmt: skip
        """The page in two parts: the VMs' families, the very object of last time while
        every VM stood still (megabytes at a big host: what is made of it, its gzip,
        can be kept by identity), then vmstats' own families (a few lines, new at every
        scrape: its duration).  ``blocks``: each reading's :meth:`vm_blocks`, made
        already (by a caller that lets its loop run between two VMs')."""
        seen = {reading.name for reading in scrape.readings}
        if blocks is None:
            blocks = [self.vm_blocks(reading) for reading in scrape.readings]
        for gone in set(self._vms) - seen:
            del self._vms[gone]
            self._sums.pop(gone, None)
            for key in [k for k in self._objects if k[0] == gone]:
                del self._objects[key]
        page = self._pages.get(openmetrics)
        if page is None or not same_objects(page[0], blocks):  # else every VM stood still
            families = by_family(block for vm in blocks for block in vm.values())
            out = [part for metric, texts in families.values()
                   for part in (header(metric, openmetrics).encode(), *texts)]  # fmt: skip
            page = self._pages[openmetrics] = (blocks, b"".join(out))
        return page[1], self._tail(scrape, openmetrics)

    def _tail(self, scrape: Scrape, openmetrics: bool) -> bytes:
        """vmstats' own families, written by prometheus_client; ``vmstats_up`` and
        ``vmstats_vm_info`` (two lines per VM) only when the VMs or what they say changed."""
        key = (openmetrics, tuple((r.name, tuple(r.info.items())) for r in scrape.readings),
               tuple(scrape.down.items()))  # fmt: skip
        cached = self._tails.get(openmetrics)
        if cached is None or cached[0] != key:
            text = (_om_latest if openmetrics else text_latest)(_Listed(vm_families(scrape)))
            cached = self._tails[openmetrics] = (key, text.removesuffix(b"# EOF\n"))
        duration = _Listed([duration_family(scrape)])
        return cached[1] + (_om_latest if openmetrics else text_latest)(duration)

    def vm_blocks(self, reading: VmReading) -> dict[str, tuple[StatMetric, bytes]]:
        """One VM's text per family (its objects' lines, in their order), as bytes: made
        again only when one of its objects' text changed.  A scrape of a host whose VMs
        stand still joins a few blocks per VM, not a line per stat per vCPU; a VM whose
        reading is the very values of last time (its reader says so by identity) costs
        no look at its objects at all."""
        cached = self._vms.get(reading.name)
        if cached is not None and cached.made_of(reading):
            return cached.blocks
        vm = label_value(reading.name)
        values = self._per_vm(reading) if self._policy.per_vm else reading.sample.values
        made = [self._lines((reading.name, item), reading, stats, vm)
                for item, stats in values.items()]  # fmt: skip
        if cached is None or not same_objects(cached.lines, made):
            grouped = by_family((p.metric, p.text) for parts in made for p in parts)
            blocks = {name: (metric, "".join(texts).encode())
                      for name, (metric, texts) in grouped.items()}  # fmt: skip
            cached = _VmText(made, blocks)
        cached.values, cached.schemas, cached.vcpus = (reading.sample.values, reading.schemas,
                                                       reading.vcpus)  # fmt: skip
        self._vms[reading.name] = cached
        return cached.blocks

    def _per_vm(self, reading: VmReading) -> dict[ObjectKey, dict[str, StatsValue]]:
        """The reading with each target's vCPUs summed into one object of the VM; the
        very sums of the last scrape while its objects' values are the very same."""
        given = list(reading.sample.values.values())
        kept = self._sums.get(reading.name)
        if kept is not None and same_objects(kept[0], given):
            return kept[1]
        sums = self._summed(reading)
        self._sums[reading.name] = (given, sums)
        return sums

    def _summed(self, reading: VmReading) -> dict[ObjectKey, dict[str, StatsValue]]:
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
               ) -> list[_Stat]:  # fmt: skip
        """One object's stats that have lines (their metric and text), in order: made
        again only if its stats or labels changed.  The stats themselves, not pairs made
        of them: a scrape where every value moved would keep 80,000 new pairs, and the
        garbage collector would walk them all."""
        provider, target, qom_path = key[1]
        if qom_path:
            labels = f'vcpu="{label_value(vcpu_label(reading, qom_path))}",vm="{vm}"'
        else:
            labels = f'vm="{vm}"'
        cached = self._objects.get(key)
        parts: dict[str, _Stat] = {}
        metrics = self.table.of(reading.schemas)
        if cached is not None and cached.labels == labels:
            if cached.stats is stats or cached.stats == stats:
                return cached.lines
            if cached.table is metrics and cached.plan is not None:
                lines = self._replanned(cached.plan, stats)
                if lines is not None:
                    cached.stats, cached.lines = stats, lines
                    return lines
            parts = cached.parts
        lines = []
        planned: list[_Stat | None] = []
        for name, value in stats.items():  # provider order, buckets lowest first
            metric = metric_of(metrics, provider, target, name, value)
            if not self._policy.keeps(metric):
                planned.append(None)
                continue
            size = len(value) if isinstance(value, list) else -1
            part = parts.get(name)
            if part is None or part.metric is not metric or part.size != size:
                part = parts[name] = _Stat(metric, size, self._starts(metric, labels, size))
            self._remake(part, stats, value)
            if value or not metric.omit_zero:
                lines.append(part)
            planned.append(part)
        self._objects[key] = _Rendered(stats, labels, lines, parts, metrics,
                                       (list(stats), planned))  # fmt: skip
        return lines

    def _replanned(
        self, plan: tuple[list[str], list[_Stat | None]], stats: Mapping[str, StatsValue]
    ) -> list[_Stat] | None:
        """A changed object's lines by its plan: only the stats that moved are written
        again; None if its stats are no longer those of the plan."""
        names, parts = plan
        if len(stats) != len(names):
            return None
        lines = []
        text = self._text
        for (name, value), planned, part in zip(stats.items(), names, parts, strict=True):
            if part is None:
                if name != planned:
                    return None
                continue
            if name != planned or part.size != (len(value) if type(value) is list else -1):
                return None
            metric = part.metric  # what _remake does, inlined: this is the hot loop
            if metric.sum_of is None:
                if part.value != value:
                    part.value, part.text = value, text(metric, part.starts, value, None)
            else:
                total = stats.get(metric.sum_of.name)
                if part.value != value or part.total != total:
                    part.value, part.total = value, total
                    part.text = text(metric, part.starts, value, total)
            if value or not metric.omit_zero:
                lines.append(part)
        return lines

    def _remake(self, part: _Stat, stats: Mapping[str, StatsValue], value: StatsValue) -> None:
        """A stat's text, written again if its value (or its histogram's sum) moved."""
        metric = part.metric
        if metric.sum_of is None:
            if part.value != value or not part.text:
                part.value, part.text = value, self._text(metric, part.starts, value, None)
            return
        total = stats.get(metric.sum_of.name)
        if part.value != value or part.total != total or not part.text:
            part.value, part.total = value, total
            part.text = self._text(metric, part.starts, value, total)

    def _starts(self, metric: StatMetric, labels: str, buckets: int) -> tuple[str, ...]:
        """Each line's text up to its value: one for a scalar; for a histogram its buckets,
        then ``_count`` and ``_sum``."""
        if buckets < 0:
            suffix = "_total" if metric.kind is Kind.COUNTER else ""
            return (f"{metric.name}{suffix}{{{metric.labels}{labels}}} ",)
        name = metric.name
        bounds = self._bounds.get((metric, buckets))
        if bounds is None:  # the same for every object of every VM
            bounds = self._bounds[(metric, buckets)] = [_go(b) for b in metric.le(buckets)]
        starts = [f'{name}_bucket{{le="{b}",{labels}}} ' for b in bounds]
        return (*starts, f"{name}_count{{{labels}}} ", f"{name}_sum{{{labels}}} ")

    @staticmethod
    def _text(metric: StatMetric, starts: tuple[str, ...], value: StatsValue,
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
