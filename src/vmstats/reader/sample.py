"""Snapshots of every stat of one VM: what every tool reads and shows.

A :class:`Sample` is what one read of a VM gives: every object's stats (VM-level and each
vCPU) in natural order (vCPU 0 first, stats in provider order, histogram buckets lowest
first), with the time it was taken.  ``top`` keeps three of them per VM (baseline,
previous, current), the exporter writes the latest, a recording stores them.  Schemas are
apart (:class:`Schemas`): they change only when the kernel's descriptors do.  A sample is
made from ``query-stats`` replies (:func:`sample_from_wire`), from a registry in this
process (:func:`take_sample`) or read back from a recording; the order is turned natural
in one place, :func:`vmstats.stats.order.natural_values`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter, is_
from typing import Any

from vmstats.stats.decode import wire_results
from vmstats.stats.model import (
    VM_TARGETS,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsValue,
)
from vmstats.stats.order import natural_schema_values, natural_schemas, natural_values
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.wire import EncodedStats

ObjectKey = tuple[str, str, str]  # (provider, target, qom-path or "")
SchemaKey = tuple[str, str, str]  # (provider, target, stat name)


@dataclass(frozen=True)
class Sample:
    """All values of one VM at one moment (``taken``: seconds since the epoch)."""

    taken: float
    values: Mapping[ObjectKey, Mapping[str, StatsValue]]
    #: Columns of values already transposed for rows (:func:`vmstats.top.frame.vm_rows`):
    #: a sample is the current one, then the previous, then maybe the baseline.
    transposed: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)

    def objects(self, target: str) -> list[ObjectKey]:
        return [key for key in self.values if key[1] == target]


@dataclass(frozen=True)
class Schemas:
    """The schema entries of one VM by (provider, target, name), in provider order."""

    entries: Mapping[SchemaKey, StatsSchemaValue] = field(default_factory=dict)

    @classmethod
    def of(cls, schemas: Iterable[StatsSchema]) -> Schemas:
        entries: dict[SchemaKey, StatsSchemaValue] = {}
        for schema in natural_schemas(list(schemas)):
            for value in natural_schema_values(schema):
                entries[(schema.provider.value, schema.target.value, value.name)] = value
        return cls(entries)

    def get(self, key: SchemaKey) -> StatsSchemaValue | None:
        return self.entries.get(key)

    @cached_property
    def groups(self) -> dict[tuple[str, str], list[tuple[str, StatsSchemaValue]]]:
        """The entries by (provider, target), as (name, schema): rows are made per group,
        every refresh, from schemas that rarely change."""
        groups: dict[tuple[str, str], list[tuple[str, StatsSchemaValue]]] = {}
        for (provider, target, name), schema in self.entries.items():
            groups.setdefault((provider, target), []).append((name, schema))
        return groups

    def names(self) -> list[SchemaKey]:
        return list(self.entries)


@dataclass
class SampleMemo:
    """What :func:`sample_of` made last time, kept by its caller between samples."""

    #: per object, the stats object of a provider's result and the values made of it
    objects: dict[ObjectKey, tuple[object, dict[str, StatsValue]]] = field(default_factory=dict)
    #: the results given last time, per target in order, and the values made of them all
    results: list[tuple[StatsTarget, StatsResult]] = field(default_factory=list)
    values: dict[ObjectKey, dict[str, StatsValue]] = field(default_factory=dict)


def same_objects(one: Collection[object], other: Collection[object]) -> bool:
    """Are two collections the very same objects, one by one?  What a consumer asks to know
    that nothing was read anew (readers keep a value that did not change the same object),
    and so that what it made of them last time still stands."""
    return len(one) == len(other) and all(map(is_, one, other))


def sample_of(taken: float, results: Mapping[StatsTarget, Sequence[StatsResult]],
              memo: SampleMemo | None = None) -> Sample:  # fmt: skip
    """A sample from ``query-stats`` results per target, in QEMU's (wire) order.

    With ``memo`` (kept by the caller between samples), an object whose provider gave
    the very same stats object as last time (the KVM provider does while the VM's data
    did not change) keeps the very same values: consumers that kept what they made of
    them (the exposition's text) see that at once, by identity.  When every result is
    the very one of last time (a VM standing still: most of a big host), the sample's
    values are the very mapping of last time, and its consumers skip the VM whole."""
    given = [(target, result) for target, found in results.items() for result in found]
    if memo is not None and memo.results and len(given) == len(memo.results) and all(
            a[0] is b[0] and a[1] is b[1]
            for a, b in zip(given, memo.results, strict=True)):  # fmt: skip
        return Sample(taken, memo.values)
    values: dict[ObjectKey, dict[str, StatsValue]] = {}
    fresh: dict[ObjectKey, tuple[object, dict[str, StatsValue]]] = {}
    for target, found in results.items():
        for result in reversed(found):
            key = (result.provider.value, target.value, result.qom_path or "")
            kept = memo.objects.get(key) if memo is not None else None
            if kept is not None and kept[0] is result.stats and key not in values:
                natural = kept[1]
            elif isinstance(result.stats, EncodedStats):  # straight from the values
                natural = result.stats.natural()
            else:
                names, stats = _columns(result.stats)
                natural = natural_values(names, stats)
            fresh[key] = (result.stats, natural)
            if key in values:  # several results for one object: merged
                values[key] = {**values[key], **natural}
            else:
                values[key] = natural
    if memo is not None:
        memo.objects, memo.results, memo.values = fresh, given, values
    return Sample(taken, values)


_NAME = attrgetter("name")
_VALUE = attrgetter("value")


def _columns(stats: Iterable[tuple[str, StatsValue]]) -> tuple[list[str], list[StatsValue]]:
    pairs = list(stats)
    return [name for name, _ in pairs], [value for _, value in pairs]


@dataclass
class WireMemo:
    """What :func:`sample_from_wire` made last time, kept by its caller between samples."""

    #: per request, the last reply's bytes and the values decoded from them
    replies: dict[str, tuple[bytes, dict[ObjectKey, dict[str, StatsValue]]]] = field(
        default_factory=dict
    )
    requests: list[str] = field(default_factory=list)  # the last sample's, in order
    values: dict[ObjectKey, dict[str, StatsValue]] = field(default_factory=dict)  # of them all


def sample_from_wire(taken: float, replies: Mapping[str, bytes | Any],
                     memo: WireMemo | None = None) -> Sample:  # fmt: skip
    """A sample from ``query-stats`` replies per target, as QMP sent them (bytes; decoded
    JSON is taken too), checked as they are decoded (:func:`wire_results`): a refresh of
    many VMs decodes thousands of values.  :class:`ClientError` if a reply is malformed.
    A key is the target, or ``TARGET:PROVIDER`` for a reply asked of one provider.

    With ``memo`` (kept by the caller between samples), a reply of the very bytes of
    the last one (a VM whose stats stood still) is not decoded again: its objects keep
    the very same values, which consumers see by identity; and when every reply is, the
    sample's values are the very mapping of last time."""
    values: dict[ObjectKey, dict[str, StatsValue]] = {}
    unchanged = memo is not None and list(replies) == memo.requests
    for request, reply in replies.items():
        target = request.partition(":")[0]
        kept = memo.replies.get(request) if memo is not None else None
        if kept is not None and kept[0] == reply:
            part = kept[1]
        else:
            unchanged = False
            part = {}
            for result in reversed(wire_results(reply, target)):
                stats = result.stats
                key = (result.provider, target, result.qom_path or "")
                found = natural_values(list(map(_NAME, stats)), list(map(_VALUE, stats)))
                part.setdefault(key, {}).update(found)
            if memo is not None and isinstance(reply, bytes):
                memo.replies[request] = (reply, part)
        values.update(part)
    if memo is not None:
        if unchanged:
            return Sample(taken, memo.values)
        memo.requests, memo.values = list(replies), values
    return Sample(taken, values)


def take_sample(registry: StatsRegistry, memo: SampleMemo | None = None) -> Sample:
    """Read every stat of every provider of ``registry`` (in this process)."""
    results = {t: registry.all_stats(t) for t in VM_TARGETS}
    return sample_of(time.time(), results, memo)
