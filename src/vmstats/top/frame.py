"""What a refresh shows, computed from samples: one row per stat, pure and testable.

For each stat of a VM, over the objects chosen (the VM itself, or its vCPUs):

- cumulative: the rate per second over the last interval and the total since the
  baseline (``r`` resets the baseline);
- instant: the value now (summed over vCPUs); peak: the highest; boolean: how many
  objects are true (``blocking 3/4``);
- histograms: the samples per bucket over the last interval, their rate, the samples
  since the baseline, and p50/p90/p99 estimated from the buckets (linear within a
  bucket, the lower edge for the open last one).

The TUI, the batch modes and the recordings' replay all render these rows; units and
bucket ranges come from :mod:`vmstats.stats.units`, shared with every other tool.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from vmstats.reader.sample import Sample, Schemas, same_objects
from vmstats.stats.model import StatsSchemaValue, StatsType, StatsUnit, StatsValue
from vmstats.stats.units import bucket_edges, bucket_ranges, human, human_in_unit, human_rate

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class StatRow:
    """One stat of one VM (or of all VMs: ``vm == "total"``) at one refresh."""

    vm: str
    target: str
    name: str
    schema: StatsSchemaValue
    objects: int
    rate: float | None = None
    total: int | None = None
    value: int | None = None
    now: int | None = None  # a counter's own value now (summed): what query-stats says
    true_count: int | None = None
    buckets: tuple[int, ...] | None = None

    @property
    def percentiles(self) -> tuple[float | None, ...] | None:
        """p50, p90, p99 estimated from the buckets; made when asked (a refresh computes
        rows for every VM, the screen shows a few)."""
        return None if self.buckets is None else _percentiles(self.schema, self.buckets)

    @property
    def key(self) -> str:
        """The stat's column name in logs and CSV: ``vcpu.exits``, ``vm.pages_4k``."""
        return f"{self.target}.{self.name}"

    @property
    def is_zero(self) -> bool:
        return not (self.rate or self.total or self.value or self.true_count)

    # -- text for people --------------------------------------------------------------

    def rate_text(self) -> str:
        if self.rate is None:
            return ""
        if self.buckets is not None:
            return f"{self.rate:,.1f} samples/s"
        return human_rate(self.rate, self.schema)

    def total_text(self) -> str:
        if self.total is None:
            return ""
        if self.schema.type.is_histogram:
            return f"{self.total:,} samples"
        return human(self.total, self.schema)

    def cell_text(self) -> str:
        """One cell for a side-by-side view: the value now, and the rate of a counter."""
        if self.now is not None:
            rate = f" ({self.rate_text()})" if self.rate else ""
            return human(self.now, self.schema) + rate
        if self.true_count is not None and self.objects == 1:
            return human(bool(self.true_count), self.schema)
        return self.value_text() or self.rate_text()

    def value_text(self) -> str:
        if self.true_count is not None:
            return f"{self.true_count}/{self.objects}"
        if self.value is not None:
            return human(self.value, self.schema)
        if self.percentiles is not None:
            parts = [
                f"p{round(q * 100)} {'-' if p is None else human_in_unit(p, self.schema)}"
                for q, p in zip(QUANTILES, self.percentiles, strict=True)
            ]
            return " ".join(parts)
        return ""


def _counter(values: Sequence[StatsValue | None]) -> int:
    """The sum of a counter's values: at C speed when all are numbers, as they are."""
    try:
        return int(sum(values))  # type: ignore[arg-type]
    except TypeError:  # a missing value or a malformed one: skip it
        return sum(v for v in values if isinstance(v, int) and not isinstance(v, bool))


def _buckets(value: StatsValue | None) -> list[int]:
    return list(value) if isinstance(value, list) else []


def quantile(counts: Sequence[int], edges: Sequence[tuple[float, float | None]],
             q: float) -> float | None:  # fmt: skip
    """The ``q`` quantile of samples counted per bucket, in the edges' unit."""
    total = sum(counts)
    if not total:
        return None
    wanted = q * total
    seen = 0
    for count, (low, high) in zip(counts, edges, strict=True):
        if count and seen + count >= wanted:
            if high is None:
                return low
            return low + (high - low) * (wanted - seen) / count
        seen += count
    return edges[-1][0]


def _delta(now: StatsValue | None, before: StatsValue | None) -> int:
    """Growth of a counter; a counter that went back (a restarted VM) counts from 0."""
    if not isinstance(now, int) or isinstance(now, bool):
        return 0
    if not isinstance(before, int) or isinstance(before, bool) or before > now:
        return now
    return now - before


def _samples(value: StatsValue | None) -> int:
    return sum(value) if isinstance(value, list) else 0


def _interval_buckets(now: Sequence[StatsValue | None],
                      before: Sequence[StatsValue | None]) -> tuple[int, ...]:  # fmt: skip
    """Samples per bucket over the interval, summed over objects.  Histograms mostly do
    not change between two refreshes: those are compared whole, not bucket by bucket."""
    width = max((len(n) for n in now if isinstance(n, list)), default=0)
    counts = [0] * width
    for new, old in zip(now, before, strict=True):
        if new == old or not isinstance(new, list):
            continue
        for index, count in enumerate(_bucket_delta(new, old)):
            if index < width:
                counts[index] += count
    return tuple(counts)


def _bucket_delta(now: StatsValue | None, before: StatsValue | None) -> list[int]:
    new, old = _buckets(now), _buckets(before)
    if len(old) != len(new) or any(b > a for a, b in zip(new, old, strict=True)):
        return new
    return [a - b for a, b in zip(new, old, strict=True)]


#: Rows kept between refreshes, by (provider, target, name): a row made when its stat had
#: not moved over the interval, with the values and the baseline it was made from.  While
#: the stat stays still the row stays right, and is used again as it is; between two
#: refreshes most stats do not move.
RowMemo = dict[tuple[str, str, str], tuple[tuple[StatsValue | None, ...], Sample, StatRow]]


def vm_rows(
    vm: str,
    schemas: Schemas,
    baseline: Sample,
    previous: Sample,
    current: Sample,
    vcpus: set[str] | None = None,
    memo: RowMemo | None = None,
) -> list[StatRow]:
    """Every stat of one VM, in provider order (VM-level first, then vCPU-level).

    ``vcpus`` limits the vCPU-level rows to those QOM paths (None: all).  ``memo`` keeps
    the rows of stats that did not move, for the next call with the same ``vm`` and
    ``vcpus``: a row is made again only when its stat moved, or the baseline changed.
    """
    elapsed = current.taken - previous.taken
    rows = []
    objects: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for key in current.values:  # once per refresh, not once per stat
        if vcpus is None or key[1] != "vcpu" or key[2] in vcpus:
            objects.setdefault((key[0], key[1]), []).append(key)
    for (provider, target), stats in schemas.groups.items():
        keys = objects.get((provider, target), [])
        names = [name for name, _ in stats]
        now_columns = _columns(current, keys, names)
        before_columns = _columns(previous, keys, names)
        base_columns = _columns(baseline, keys, names)
        for index, (name, schema) in enumerate(stats):
            now = now_columns[index]
            if now.count(None) == len(now):
                continue
            before = before_columns[index]
            still = elapsed > 0 and now == before
            if still and memo is not None:
                kept = memo.get((provider, target, name))
                if (kept is not None and kept[1] is baseline and kept[2].schema is schema
                        and kept[0] == now):  # fmt: skip
                    rows.append(kept[2])
                    continue
            row = _row(vm, target, name, schema, len(keys), now, before, base_columns[index],
                       elapsed)  # fmt: skip
            if still and memo is not None:
                memo[(provider, target, name)] = (now, baseline, row)
            rows.append(row)
    return rows


def _columns(sample: Sample, keys: Sequence[tuple[str, str, str]],
             names: Sequence[str]) -> list[tuple[StatsValue | None, ...]]:  # fmt: skip
    """The values of ``names`` for each object, one tuple per name (a transposition done
    by ``itemgetter`` and ``zip`` at C speed: a refresh reads thousands of values).  Kept
    with the sample: the next refresh needs it again as the previous one."""
    memo_key = (tuple(keys), tuple(names))
    found: list[tuple[StatsValue | None, ...]] | None = sample.transposed.get(memo_key)
    if found is not None:
        return found
    getter = itemgetter(*names)
    table = []
    for key in keys:
        stats = sample.values.get(key, {})
        try:
            got = getter(stats)
        except KeyError:  # an object without some stat: slowly, and with None for it
            got = tuple(stats.get(n) for n in names) if len(names) > 1 else stats.get(names[0])
        table.append(got if len(names) > 1 else (got,))
    columns: list[tuple[StatsValue | None, ...]] = (
        list(zip(*table, strict=True)) if table else [()] * len(names)
    )
    sample.transposed[memo_key] = columns
    return columns


def _row(vm: str, target: str, name: str, schema: StatsSchemaValue, count: int,
         now: Sequence[StatsValue | None], before: Sequence[StatsValue | None],
         base: Sequence[StatsValue | None], elapsed: float) -> StatRow:  # fmt: skip
    """One stat's row from its values now, at the last refresh, and at the baseline."""
    if schema.type.is_histogram:
        buckets = _interval_buckets(now, before)
        return StatRow(
            vm, target, name, schema, count, buckets=buckets,
            total=_growth([_samples(n) for n in now], [_samples(b) for b in base]),
            rate=sum(buckets) / elapsed if elapsed > 0 else None,
        )  # fmt: skip
    if schema.unit == StatsUnit.BOOLEAN:
        return StatRow(vm, target, name, schema, count, true_count=sum(map(bool, now)))
    if schema.type == StatsType.CUMULATIVE:
        return StatRow(
            vm, target, name, schema, count, now=_counter(now),
            total=_growth(now, base),
            rate=_growth(now, before) / elapsed if elapsed > 0 else None,
        )  # fmt: skip
    if schema.type == StatsType.PEAK:
        top = max((v for v in now if isinstance(v, int)), default=0)
        return StatRow(vm, target, name, schema, count, value=top)
    return StatRow(vm, target, name, schema, count, value=_counter(now))


def _growth(now: Sequence[StatsValue | None], before: Sequence[StatsValue | None]) -> int:
    """How much counters grew, summed: in one C-speed pass when none went back."""
    try:
        if all(map(operator.ge, now, before)):  # type: ignore[arg-type]
            return sum(now) - sum(before)  # type: ignore[arg-type]
    except TypeError:  # a missing value: count object by object
        pass
    return sum(_delta(n, b) for n, b in zip(now, before, strict=True))


#: Total rows kept between refreshes, by (target, name), with the rows they summed.
TotalMemo = dict[tuple[str, str], tuple[list[StatRow], StatRow]]


def total_rows(per_vm: Sequence[Sequence[StatRow]], memo: TotalMemo | None = None) -> list[StatRow]:
    """The same stats summed over VMs (peaks: the highest), as ``vm == "total"``.

    With ``memo``, a total whose rows are the very rows it summed last time (kept by
    :func:`vm_rows` because their stats did not move) is used again."""
    merged: dict[tuple[str, str], list[StatRow]] = {}
    for rows in per_vm:
        for row in rows:
            merged.setdefault((row.target, row.name), []).append(row)
    out = []
    for key, rows in merged.items():
        if memo is not None:
            kept = memo.get(key)
            if kept is not None and same_objects(kept[0], rows):
                out.append(kept[1])
                continue
        total = _total(rows)
        if memo is not None:
            memo[key] = (rows, total)
        out.append(total)
    return out


def _total(rows: Sequence[StatRow]) -> StatRow:
    """One stat's rows of several VMs, summed."""
    first = rows[0]
    buckets = first.buckets
    if buckets is not None:
        same = [r.buckets for r in rows if r.buckets and len(r.buckets) == len(buckets)]
        buckets = tuple(map(sum, zip(*same, strict=True)))
    values = [r.value for r in rows if r.value is not None]
    value = None
    if values:
        value = max(values) if first.schema.type == StatsType.PEAK else sum(values)
    return StatRow(
        "total", first.target, first.name, first.schema, sum(r.objects for r in rows),
        rate=_sum(r.rate for r in rows), total=_sum(r.total for r in rows), value=value,
        now=_sum(r.now for r in rows), true_count=_sum(r.true_count for r in rows),
        buckets=buckets,
    )  # fmt: skip


def _percentiles(schema: StatsSchemaValue, buckets: Sequence[int]) -> tuple[float | None, ...]:
    edges = bucket_edges(schema, len(buckets))
    return tuple(quantile(buckets, edges, q) for q in QUANTILES)


N = TypeVar("N", int, float)


def _sum(values: Iterable[N | None]) -> N | None:
    """The sum of the values that are there; None when none is."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


class StatFilter:
    """kvm_stat's ``-f``: a regular expression matched at the start of stat names."""

    def __init__(self, pattern: str = "") -> None:
        self.pattern = pattern
        self._regex = re.compile(pattern) if pattern else None

    def __call__(self, name: str) -> bool:
        return self._regex is None or self._regex.match(name) is not None


SORT_KEYS = ("rate", "total", "name")


def sort_rows(rows: Iterable[StatRow], by: str) -> list[StatRow]:
    """Busiest first (by rate or total; ties by name), or by name."""
    if by == "name":
        return sorted(rows, key=lambda r: (r.name, r.target))
    if by == "total":
        return sorted(rows, key=lambda r: (-(r.total or r.value or 0), r.name))
    return sorted(rows, key=lambda r: (-(r.rate or 0), -(r.total or r.value or 0), r.name))


def histogram_bars(row: StatRow, width: int = 40) -> list[tuple[str, int, str]]:
    """(range, samples, bar) per bucket that has samples, over the last interval."""
    if not row.buckets:
        return []
    labels = bucket_ranges(row.schema, len(row.buckets))
    peak = max(row.buckets) or 1
    return [
        (label, count, "#" * max(1, round(width * count / peak)))
        for label, count in zip(labels, row.buckets, strict=True)
        if count
    ]
