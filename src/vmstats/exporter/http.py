"""The ``/metrics`` endpoint: prometheus_client's HTTP server (content negotiation between
the classic text format and OpenMetrics, gzip) over a collector whose every collection is
one scrape of the VMs.

prometheus_client serves from a thread of its own; the VMs are read in the asyncio loop
that owns them (the daemon's, or the exporter's), so a scrape is handed to that loop and
awaited with a deadline.  Each VM gets ``timeout`` seconds; one that does not answer is
``vmstats_up 0`` and the others are exported as usual.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric

from vmstats.errors import VmstatsError
from vmstats.exporter.collector import MetricTable, Scrape, families
from vmstats.exporter.reading import Reader, VmReading

log = logging.getLogger(__name__)

#: Seconds a VM may take to be read in one scrape (Prometheus' own scrape timeout is 10 s).
DEFAULT_SCRAPE_TIMEOUT = 2.0


async def scrape(readers: Iterable[Reader], timeout: float) -> Scrape:
    """Read every VM at once, each within ``timeout``."""
    started = time.perf_counter()
    readers = list(readers)

    async def one(reader: Reader) -> VmReading:
        return await asyncio.wait_for(reader.read(), timeout)

    results = await asyncio.gather(*map(one, readers), return_exceptions=True)
    readings, down = [], {}
    taken: set[str] = set()
    for reader, result in zip(readers, results, strict=True):
        name = result.name if isinstance(result, VmReading) else reader.name
        unique, n = name, 1
        while unique in taken:  # the vm label must tell VMs apart
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique)
        if isinstance(result, VmReading):
            result.name = unique
            readings.append(result)
        elif isinstance(result, VmstatsError | TimeoutError | OSError):
            down[unique] = str(result) or "no answer in time"
            log.debug("scrape: %s is down: %s", unique, down[unique])
        else:
            raise result
    return Scrape(readings, down, time.perf_counter() - started)


class ScrapeCollector:
    """A prometheus_client collector: each ``collect`` reads the VMs that ``readers``
    gives, in ``loop``."""

    def __init__(self, readers: Callable[[], Iterable[Reader]], loop: asyncio.AbstractEventLoop,
                 timeout: float = DEFAULT_SCRAPE_TIMEOUT) -> None:  # fmt: skip
        self.readers = readers
        self.loop = loop
        self.timeout = timeout
        self._table = MetricTable()

    def describe(self) -> list[Metric]:
        return []  # nothing to describe ahead: the families are the VMs'

    def collect(self) -> Iterator[Metric]:
        async def run() -> Scrape:
            return await scrape(self.readers(), self.timeout)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            found = future.result(self.timeout + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        yield from families(found, self._table)


class MetricsEndpoint:
    """``http://HOST:PORT/metrics`` until :meth:`close`."""

    def __init__(self, collector: ScrapeCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server: WSGIServer | None = None

    def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0).  OSError if the address is taken."""
        self._server, _ = start_http_server(port, host, self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
