"""Snapshots of every stat of one VM, and how they are taken, stored and read back.

A :class:`Sample` is what one refresh reads: every object's stats (VM-level and each
vCPU) in natural order (vCPU 0 first, histogram buckets lowest first), with the time it
was taken.  Schemas are apart (:class:`Schemas`): they change only when the kernel's
descriptors do.  Samples come from a registry in this process (the demo), a QMP socket
(:mod:`.source`) or a recording (:mod:`.record`); all three build them from QMP's own
wire shapes, so one decoder serves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any

from vmstats.stats.decode import wire_results
from vmstats.stats.model import (
    StatsFilter,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsValue,
)
from vmstats.stats.order import natural_results
from vmstats.stats.registry import StatsRegistry

ObjectKey = tuple[str, str, str]  # (provider, target, qom-path or "")
SchemaKey = tuple[str, str, str]  # (provider, target, stat name)
TARGETS = (StatsTarget.VM, StatsTarget.VCPU)


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
        for schema in reversed(list(schemas)):  # QEMU prepends: undo it
            for value in reversed(schema.stats):
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


def sample_of(taken: float, results: Mapping[StatsTarget, Sequence[StatsResult]]) -> Sample:
    """A sample from ``query-stats`` results per target, in QEMU's (wire) order."""
    values: dict[ObjectKey, dict[str, StatsValue]] = {}
    for target, found in results.items():
        for result in natural_results(found):
            key = (result.provider.value, target.value, result.qom_path or "")
            values.setdefault(key, {}).update(result.stats)
    return Sample(taken, values)


_NAME = attrgetter("name")
_VALUE = attrgetter("value")


def sample_from_wire(taken: float, replies: Mapping[str, bytes | Any]) -> Sample:
    """A sample from ``query-stats`` replies per target, as QMP sent them (bytes; decoded
    JSON is taken too): the same as :func:`sample_of` over decoded results, in one pass
    (a refresh of many VMs decodes thousands of values, checked as it goes by
    :func:`wire_results`).  :class:`ClientError` if a reply is malformed."""
    values: dict[ObjectKey, dict[str, StatsValue]] = {}
    for target, reply in replies.items():
        for result in reversed(wire_results(reply, target)):
            stats = result.stats[::-1]
            found = list(map(_VALUE, stats))
            kinds = list(map(type, found))
            start = 0
            for _ in range(kinds.count(list)):  # histograms: buckets lowest first
                start = kinds.index(list, start)
                found[start] = found[start][::-1]
                start += 1
            key = (result.provider, target, result.qom_path or "")
            values.setdefault(key, {}).update(zip(map(_NAME, stats), found, strict=True))
    return Sample(taken, values)


def take_sample(registry: StatsRegistry) -> Sample:
    """Read every stat of every provider of ``registry`` (in this process)."""
    return sample_of(time.time(), {t: registry.query_stats(StatsFilter(t)) for t in TARGETS})
