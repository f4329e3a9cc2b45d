"""Providers of statistics and the query engine: QEMU's ``add_stats_callbacks`` and
``qmp_query_stats`` / ``qmp_query_stats_schemas``, with QEMU's filter semantics and order.

QEMU builds every result list by *prepending*, so the last thing added comes first on the
wire.  Providers here return what they add in the order they add it; the engine applies the
prepend, once, for all of them.  What a provider does inside a result (the order of its
stats, histogram buckets) is the provider's business, as in QEMU.

A provider of vmstats' own (:attr:`StatsProvider.is_extension`) answers only a request
that names it: without ``providers`` (or a ``provider`` for the schemas) the reply is
exactly QEMU's, which clients that parse the provider enum strictly rely on.
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
        self._extensions: list[StatsProvider] = []

    def add_stats_callbacks(self, callbacks: StatsCallbacks) -> None:
        """Register a provider.  Order matters: it decides the order of results."""
        self._entries.append(callbacks)
        if callbacks.provider.is_extension and callbacks.provider not in self._extensions:
            self._extensions.append(callbacks.provider)

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
        if request is None and entry.provider.is_extension:
            return
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

    @property
    def extensions(self) -> list[StatsProvider]:
        """vmstats' own providers registered here (served only when named), once each."""
        return list(self._extensions)

    def extension_stats(self, target: StatsTarget) -> list[StatsResult]:
        """vmstats' own providers' values for ``target``, in wire order."""
        named = [StatsRequest(p) for p in self.extensions]
        return self.query_stats(StatsFilter(target, named)) if named else []

    def all_stats(self, target: StatsTarget) -> list[StatsResult]:
        """Every provider's values for ``target``, vmstats' own too, in wire order (they
        were registered last, so QEMU's prepending puts them first): what a tool of this
        process reads (a QMP client names them, as :mod:`vmstats.reader` does)."""
        return self.extension_stats(target) + self.query_stats(StatsFilter(target))

    def extension_schemas(self) -> list[StatsSchema]:
        """vmstats' own providers' schemas, in wire order."""
        return [s for p in reversed(self.extensions) for s in self.query_stats_schemas(p)]

    def all_schemas(self) -> list[StatsSchema]:
        """Every provider's schemas, vmstats' own too, in wire order."""
        return self.extension_schemas() + self.query_stats_schemas()

    def query_stats_schemas(self, provider: StatsProvider | None = None) -> list[StatsSchema]:
        """``query-stats-schemas``: every provider, or only ``provider``."""
        added: list[StatsSchema] = []
        for entry in self._entries:
            if entry.provider == provider or (provider is None and not entry.provider.is_extension):
                added.extend(entry.schemas())
        added.reverse()
        return added
