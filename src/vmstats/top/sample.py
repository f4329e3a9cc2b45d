"""Snapshots of every stat of a registry, and per-second rates between two of them.

Rates are computed for ``cumulative`` stats only (the others are levels, not counts);
histograms and booleans are kept as values.  Objects are in natural order (vCPU 0 first).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from vmstats.stats.model import StatsFilter, StatsTarget, StatsType, StatsValue
from vmstats.stats.order import natural_results
from vmstats.stats.registry import StatsRegistry

ObjectKey = tuple[str, str, str]  # (provider, target, qom-path or "")


@dataclass(frozen=True)
class Sample:
    """All values at one moment: object -> stat name -> value."""

    taken: float
    values: Mapping[ObjectKey, Mapping[str, StatsValue]]
    types: Mapping[tuple[str, str, str], StatsType]  # (provider, target, name) -> type


def take_sample(registry: StatsRegistry) -> Sample:
    types = {
        (schema.provider.value, schema.target.value, value.name): value.type
        for schema in registry.query_stats_schemas()
        for value in schema.stats
    }
    values: dict[ObjectKey, dict[str, StatsValue]] = {}
    for target in (StatsTarget.VM, StatsTarget.VCPU):
        for result in natural_results(registry.query_stats(StatsFilter(target))):
            key = (result.provider.value, target.value, result.qom_path or "")
            values[key] = dict(result.stats)
    return Sample(time.monotonic(), values, types)


def rates(before: Sample, after: Sample) -> dict[ObjectKey, dict[str, float]]:
    """Per-second increase of every cumulative scalar present in both samples."""
    elapsed = after.taken - before.taken
    out: dict[ObjectKey, dict[str, float]] = {}
    if elapsed <= 0:
        return out
    for key, stats in after.values.items():
        old = before.values.get(key)
        if old is None:
            continue
        provider, target, _ = key
        row: dict[str, float] = {}
        for name, value in stats.items():
            previous = old.get(name)
            if (
                after.types.get((provider, target, name)) == StatsType.CUMULATIVE
                and isinstance(value, int)
                and not isinstance(value, bool)
                and isinstance(previous, int)
            ):
                row[name] = (value - previous) / elapsed
        out[key] = row
    return out
