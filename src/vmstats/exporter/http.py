"""The ``/metrics`` endpoint: content negotiation as prometheus_client does it (classic text
or OpenMetrics, gzip when asked), every request one scrape of the VMs.

The HTTP side runs in threads of its own (the standard library's threading server, each
connection with a socket timeout); the VMs are read in the asyncio loop that owns them
(the daemon's, or the exporter's): a scrape is handed to that loop and awaited with a
deadline.  Each VM gets ``timeout`` seconds; one that does not answer is ``vmstats_up 0``
and the others are exported as usual.  The text is written by :mod:`.exposition`.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from vmstats.errors import VmstatsError
from vmstats.exporter.collector import Scrape
from vmstats.exporter.exposition import Exposition
from vmstats.exporter.reading import Reader, VmReading

log = logging.getLogger(__name__)

#: Seconds a VM may take to be read in one scrape (Prometheus' own scrape timeout is 10 s).
DEFAULT_SCRAPE_TIMEOUT = 2.0
#: Seconds an HTTP client may stay silent before its connection is dropped.
CLIENT_TIMEOUT = 30.0


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


class MetricsEndpoint:
    """``http://HOST:PORT/metrics`` for the VMs ``readers`` gives, read in ``loop``."""

    def __init__(self, readers: Callable[[], Iterable[Reader]], loop: asyncio.AbstractEventLoop,
                 timeout: float = DEFAULT_SCRAPE_TIMEOUT) -> None:  # fmt: skip
        self.readers = readers
        self.loop = loop
        self.timeout = timeout
        self.exposition = Exposition()
        self._writing = threading.Lock()  # the exposition's cache is one scrape's at a time
        self._server: ThreadingHTTPServer | None = None

    def page(self, openmetrics: bool) -> bytes:
        """One scrape's text (called from an HTTP thread)."""

        async def run() -> Scrape:
            return await scrape(self.readers(), self.timeout)

        found = asyncio.run_coroutine_threadsafe(run(), self.loop).result(self.timeout + 5)
        with self._writing:
            return self.exposition.render(found, openmetrics)

    def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0).  OSError if the address is taken."""
        endpoint = self

        class Handler(_Handler):
            metrics = endpoint

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    metrics: MetricsEndpoint
    timeout = CLIENT_TIMEOUT
    server_version = "vmstats"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/metrics", "/"):
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
            return
        _, content_type = choose_encoder(self.headers.get("Accept") or "")
        try:
            body = self.metrics.page(content_type.startswith("application/openmetrics-text"))
        except Exception as exc:  # a scrape that failed as a whole: say so, keep serving
            log.exception("scrape failed")
            self._reply(500, "text/plain; charset=utf-8", f"scrape failed: {exc}\n".encode())
            return
        self._reply(200, content_type, body)

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        encoding = None
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body, encoding = gzip.compress(body, compresslevel=1), "gzip"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)
