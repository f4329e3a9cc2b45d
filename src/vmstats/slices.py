"""Long work in the event loop, cut into slices so that the loop goes on answering.

Everything the daemon serves shares one event loop: every VM's QMP socket, ``/metrics``,
the scans.  A scrape of 256 VMs x 8 vCPUs whose values all changed is 100 ms of reading
and 150 to 250 ms of writing text (1.7 s for the first), all of it Python that never
waits: without a break, every query to every VM waited for it (up to 2.6 s measured).
Such work calls :meth:`TimeSlices.pause` between its steps (a VM each); the loop runs
whatever is ready once every :data:`SLICE` of work, so a query waits about a slice, not a
whole scrape.
"""

from __future__ import annotations

import asyncio
import time

#: Seconds of work between two turns of the loop: what a query waits for such work (the
#: collector's pauses aside), and each turn costs the work a poll of the loop's sockets.
SLICE = 0.005


class TimeSlices:
    """The clock of one piece of sliced work (one at a time: its steps in order)."""

    def __init__(self) -> None:
        self._until = time.perf_counter() + SLICE

    async def pause(self) -> None:
        """Let the loop run if this slice of work is used up."""
        if time.perf_counter() >= self._until:
            await asyncio.sleep(0)  # the loop polls its sockets before it comes back here
            self._until = time.perf_counter() + SLICE
