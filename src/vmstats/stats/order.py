"""Natural order for people: the inverse of QEMU's prepend order.

On the wire QEMU's order rules (last vCPU first, stats and histogram buckets reversed).
Human-facing tools show objects in the order they were added, stats in provider order
and buckets from the lowest range up; this is the one place that knows how.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmstats.stats.model import Stats, StatsResult, StatsSchema, StatsSchemaValue, StatsValue


def natural_stats(result: StatsResult) -> list[Stats]:
    """The stats of one result in provider order, histogram buckets ascending."""
    return [
        Stats(name, value[::-1] if isinstance(value, list | tuple) else value)
        for name, value in reversed(result.stats)
    ]


def natural_results(results: Sequence[StatsResult]) -> list[StatsResult]:
    """Results in the order they were added (vCPU 0 first), each in natural order."""
    return [StatsResult(r.provider, natural_stats(r), r.qom_path) for r in reversed(results)]


def natural_qom_paths(results: Sequence[StatsResult]) -> list[str]:
    """The vCPUs' QOM paths in the order they were added, once each (with several
    providers a vCPU has several results): how a server without ``query-cpus-fast``
    numbers its vCPUs."""
    return list(dict.fromkeys(r.qom_path or "" for r in reversed(results)))


def natural_schemas(schemas: Sequence[StatsSchema]) -> list[StatsSchema]:
    """Schemas in the order their providers and targets were added (QEMU prepends)."""
    return list(reversed(schemas))


def natural_schema_values(schema: StatsSchema) -> list[StatsSchemaValue]:
    """The entries of one schema in provider order (the order of :func:`natural_stats`)."""
    return list(reversed(schema.stats))


def natural_values(names: Sequence[str], values: Sequence[StatsValue]) -> dict[str, StatsValue]:
    """One object's stats, given in wire order as names and values side by side, by name
    in provider order with histogram buckets ascending.  The hot path of every reader
    (thousands of values per refresh): the buckets are found by type, in C."""
    found = list(values[::-1])
    kinds = list(map(type, found))
    start = 0
    for _ in range(kinds.count(list)):
        start = kinds.index(list, start)
        found[start] = found[start][::-1]  # type: ignore[index]
        start += 1
    return dict(zip(names[::-1], found, strict=True))
