"""Providers of statistics and the query engine: QEMU's ``add_stats_callbacks`` and
``qmp_query_stats`` / ``qmp_query_stats_schemas``, with QEMU's filter semantics and order.

QEMU builds every result list by *prepending*, so the last thing added comes first on the
wire.  Providers here return what they add in the order they add it; the engine applies the
prepend, once, for all of them.  What a provider does inside a result (the order of its
stats, histogram buckets) is the provider's business, as in QEMU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from vmstats.stats.model import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
)


def apply_str_list_filter(name: str, wanted: Sequence[str] | None) -> bool:
    """QEMU's filter rule for stat names and QOM paths: None means all, else exact match."""
    return wanted is None or name in wanted


@runtime_checkable
class StatsCallbacks(Protocol):
    """What a provider registers: one callback for values, one for schemas.

    Both return results in the order the provider adds them.  Either may raise
    :class:`vmstats.qapi.GenericError`; the first error fails the whole command.
    """

    provider: StatsProvider

    def stats(
        self,
        target: StatsTarget,
        names: Sequence[str] | None,
        targets: Sequence[str] | None,
    ) -> Iterable[StatsResult]:
        """Values for ``target``.

        ``names`` (stat names) and ``targets`` (QOM paths of vCPUs) are None for "all" and
        never empty: the engine does not call a provider for an empty filter.  A provider
        omits an object left with no stat, and returns nothing for a target it does not
        serve.
        """
        ...

    def schemas(self) -> Iterable[StatsSchema]:
        """The descriptions of everything the provider serves."""
        ...


class StatsRegistry:
    """The list of registered providers, in registration order (duplicates allowed)."""

    def __init__(self) -> None:
        self._entries: list[StatsCallbacks] = []

    def add_stats_callbacks(self, callbacks: StatsCallbacks) -> None:
        """Register a provider.  Order matters: it decides the order of results."""
        self._entries.append(callbacks)

    @property
    def providers(self) -> list[StatsCallbacks]:
        return list(self._entries)

    def query_stats(self, filter: StatsFilter) -> list[StatsResult]:
        """``query-stats``.

        With ``providers`` present each registered provider is called once per matching
        request (so a provider listed twice answers twice, as in QEMU); without it, once.
        """
        added: list[StatsResult] = []
        for entry in self._entries:
            requests: Sequence[StatsRequest | None] = (
                filter.providers if filter.providers is not None else (None,)
            )
            for request in requests:
                self._invoke(entry, filter, request, added)
        added.reverse()
        return added

    @staticmethod
    def _invoke(
        entry: StatsCallbacks,
        filter: StatsFilter,
        request: StatsRequest | None,
        added: list[StatsResult],
    ) -> None:
        names: Sequence[str] | None = None
        if request is not None:
            if request.provider != entry.provider:
                return
            if request.names is not None and not request.names:
                return
            names = request.names
        targets: Sequence[str] | None = None
        if filter.target == StatsTarget.VCPU and filter.vcpus is not None:
            if not filter.vcpus:
                return
            targets = filter.vcpus
        added.extend(entry.stats(filter.target, names, targets))

    def query_stats_schemas(self, provider: StatsProvider | None = None) -> list[StatsSchema]:
        """``query-stats-schemas``: every provider, or only ``provider``."""
        added: list[StatsSchema] = []
        for entry in self._entries:
            if provider is None or entry.provider == provider:
                added.extend(entry.schemas())
        added.reverse()
        return added
