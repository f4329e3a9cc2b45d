"""The stats QMP commands, bound to a registry: what a monitor plugs in to serve them."""

from __future__ import annotations

from vmstats.qapi.dispatch import Dispatcher, Handler
from vmstats.qapi.output import OutputEncoder
from vmstats.qapi.schema import Version
from vmstats.stats.model import StatsFilter, StatsProvider, StatsResult, StatsSchema
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.schema import DEFAULT_VERSION, stats_schema


class EncodedSchemas(list[StatsSchema]):
    """A ``query-stats-schemas`` reply that carries its wire text, made once."""

    def __init__(self, schemas: list[StatsSchema], text: str) -> None:
        super().__init__(schemas)
        self._text = text

    def __qmp_json__(self) -> str:
        return self._text


class SchemasCache:
    """Encoded schema replies, by provider filter.  Schemas change only when a kernel's
    descriptors do, and a provider returns the same schema objects until then: a reply
    made of the very same objects is the same text, so it is encoded once."""

    def __init__(self) -> None:
        self._encoder = OutputEncoder(stats_schema((8, 0)))  # same keys in every version
        self._replies: dict[StatsProvider | None, EncodedSchemas] = {}

    def reply(self, provider: StatsProvider | None, schemas: list[StatsSchema]) -> EncodedSchemas:
        seen = self._replies.get(provider)
        if (
            seen is None
            or len(seen) != len(schemas)
            or any(a is not b for a, b in zip(seen, schemas, strict=True))
        ):
            text = self._encoder.encode_text("[StatsSchema]", schemas)
            seen = self._replies[provider] = EncodedSchemas(schemas, text)
        return seen


def stats_handlers(registry: StatsRegistry) -> dict[str, Handler]:
    """Handlers for ``query-stats`` and ``query-stats-schemas`` over ``registry``."""
    cache = SchemasCache()

    def query_stats(filter: StatsFilter) -> list[StatsResult]:
        return registry.query_stats(filter)

    def query_stats_schemas(provider: StatsProvider | None = None) -> list[StatsSchema]:
        return cache.reply(provider, registry.query_stats_schemas(provider))

    return {"query-stats": query_stats, "query-stats-schemas": query_stats_schemas}


def stats_dispatcher(registry: StatsRegistry, version: Version = DEFAULT_VERSION) -> Dispatcher:
    """The two stats commands over ``registry``, as QEMU ``version`` serves them.

    What a Python VMM embeds when it has its own QMP loop; the full monitor (negotiation,
    control commands, HMP) is :class:`vmstats.qmp.monitor.Monitor`.
    """
    return Dispatcher(stats_schema(version), stats_handlers(registry))
