"""What moves a view forward: live refreshes every interval, or a recording's refreshes
at their recorded pace (times ``speed``).  The TUI and the batch modes share these."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from vmstats.top.record import Refresh
from vmstats.top.watch import Watch


class Driver(Protocol):
    watch: Watch
    interval: float

    async def step(self) -> float | None:
        """Advance one refresh; seconds until the next, or None when there is no more."""
        ...


class LiveDriver:
    def __init__(self, watch: Watch, interval: float) -> None:
        self.watch = watch
        self.interval = interval

    async def step(self) -> float | None:
        await self.watch.refresh()
        return self.interval


class ReplayDriver:
    """Plays refreshes back; ``speed`` 0 means as fast as they can be written."""

    def __init__(self, watch: Watch, refreshes: Iterator[Refresh], speed: float = 1.0) -> None:
        self.watch = watch
        self.speed = speed
        self.interval = 0.0
        self._refreshes = refreshes
        self._next: Refresh | None = next(refreshes, None)

    async def step(self) -> float | None:
        current = self._next
        if current is None:
            return None
        current.apply(self.watch)
        self._next = next(self._refreshes, None)
        if self._next is None:
            return 0.0  # shown; the next step says the recording has ended
        self.interval = max(0.0, self._next.tick - current.tick)
        return self.interval / self.speed if self.speed > 0 else 0.0
