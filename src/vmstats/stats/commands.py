"""The stats QMP commands, bound to a registry: what a monitor plugs in to serve them."""

from __future__ import annotations

from vmstats.qapi.dispatch import Dispatcher, Handler
from vmstats.qapi.schema import Version
from vmstats.stats.model import StatsFilter, StatsProvider, StatsResult, StatsSchema
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.schema import DEFAULT_VERSION, stats_schema


def stats_handlers(registry: StatsRegistry) -> dict[str, Handler]:
    """Handlers for ``query-stats`` and ``query-stats-schemas`` over ``registry``."""

    def query_stats(filter: StatsFilter) -> list[StatsResult]:
        return registry.query_stats(filter)

    def query_stats_schemas(provider: StatsProvider | None = None) -> list[StatsSchema]:
        return registry.query_stats_schemas(provider)

    return {"query-stats": query_stats, "query-stats-schemas": query_stats_schemas}


def stats_dispatcher(registry: StatsRegistry, version: Version = DEFAULT_VERSION) -> Dispatcher:
    """The two stats commands over ``registry``, as QEMU ``version`` serves them.

    What a Python VMM embeds when it has its own QMP loop; the full monitor (negotiation,
    control commands, HMP) is :class:`vmstats.qmp.monitor.Monitor`.
    """
    return Dispatcher(stats_schema(version), stats_handlers(registry))
