"""The stats QMP commands, bound to a registry: what a monitor plugs in to serve them."""

from __future__ import annotations

from vmstats.qapi.dispatch import Handler
from vmstats.stats.model import StatsFilter, StatsProvider, StatsResult, StatsSchema
from vmstats.stats.registry import StatsRegistry


def stats_handlers(registry: StatsRegistry) -> dict[str, Handler]:
    """Handlers for ``query-stats`` and ``query-stats-schemas`` over ``registry``."""

    def query_stats(filter: StatsFilter) -> list[StatsResult]:
        return registry.query_stats(filter)

    def query_stats_schemas(provider: StatsProvider | None = None) -> list[StatsSchema]:
        return registry.query_stats_schemas(provider)

    return {"query-stats": query_stats, "query-stats-schemas": query_stats_schemas}
