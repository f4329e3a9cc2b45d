"""The ``/metrics`` endpoint: content negotiation as prometheus_client does it (classic text
or OpenMetrics, gzip when asked), every request one scrape of the VMs.

The HTTP side runs in threads of its own (the standard library's threading server); the
VMs are read in the asyncio loop that owns them (the daemon's, or the exporter's): a
scrape is handed to that loop and awaited with a deadline.  Each VM gets ``timeout``
seconds; one that does not answer is ``vmstats_up 0`` and the others are exported as
usual.  The text is written by :mod:`.exposition`.

The daemon runs privileged and any local user can connect, so the endpoint is bounded as
its QMP sockets are (:class:`ServerLimits`): so many connections at once (more are
closed at once), a request's line and headers must arrive within ``message_timeout`` of
its first byte (a client sending a byte now and then holds nothing for long), a kept-alive
connection may stay silent ``idle_timeout``, a reply must be taken within
``write_timeout``.  Requests that come while a scrape runs share it: clients scraping in a
loop cost one scrape at a time, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from vmstats.exporter.exposition import Exposition
from vmstats.exporter.scrape import Scrape, scrape
from vmstats.limits import RateLimitedLog, ServerLimits, fd_budget, listen_backlog
from vmstats.reader.reading import Reader

log = logging.getLogger(__name__)

#: Seconds a VM may take to be read in one scrape (Prometheus' own scrape timeout is 10 s).
DEFAULT_SCRAPE_TIMEOUT = 2.0


class MetricsEndpoint:
    """``http://HOST:PORT/metrics`` for the VMs ``readers`` gives, read in ``loop``."""

    def __init__(self, readers: Callable[[], Iterable[Reader]], loop: asyncio.AbstractEventLoop,
                 timeout: float = DEFAULT_SCRAPE_TIMEOUT,
                 limits: Callable[[], ServerLimits] = ServerLimits) -> None:  # fmt: skip
        """``limits`` gives the limits in force (asked per connection: the daemon's are
        reread on SIGHUP); by default :class:`ServerLimits`' defaults."""
        self.readers = readers
        self.loop = loop
        self.timeout = timeout
        self.limits = limits
        self.exposition = Exposition()
        self._writing = threading.Lock()  # the exposition's cache is one scrape's at a time
        self._sharing = threading.RLock()
        self._running: concurrent.futures.Future[Scrape] | None = None
        self._server: _Server | None = None

    def page(self, openmetrics: bool) -> bytes:
        """One scrape's text (called from an HTTP thread): the scrape running now if there
        is one, else a new one."""

        async def run() -> Scrape:
            return await scrape(self.readers(), self.timeout)

        with self._sharing:
            running = self._running
            if running is None:
                running = asyncio.run_coroutine_threadsafe(run(), self.loop)
                self._running = running
                running.add_done_callback(self._finished)
        found = running.result(self.timeout + 5)
        with self._writing:
            return self.exposition.render(found, openmetrics)

    def _finished(self, future: concurrent.futures.Future[Scrape]) -> None:
        with self._sharing:
            if self._running is future:  # the next request scrapes afresh
                self._running = None

    def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0).  OSError if the address is taken."""
        endpoint = self

        class Handler(_Handler):
            metrics = endpoint

        self._server = _Server((host, port), Handler, self.limits)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``limits().max_connections`` of them (the limits
    are asked each time: the daemon rereads them on SIGHUP)."""

    daemon_threads = True
    request_queue_size = listen_backlog()

    def __init__(self, address: tuple[str, int], handler: type[_Handler],
                 limits: Callable[[], ServerLimits]) -> None:  # fmt: skip
        self._limits = limits
        self._fds = fd_budget()  # connections are kept below the fd limit too
        self._active = 0
        self._counting = threading.Lock()
        self._refusals = RateLimitedLog(log)
        super().__init__(address, handler)

    @property
    def limits(self) -> ServerLimits:
        return self._limits()

    def process_request(self, request: Any, client_address: Any) -> None:
        most = min(self.limits.max_connections, self._fds)
        with self._counting:
            full = self._active >= most
            self._active += not full
        if full:
            self._refusals.warning("full", "metrics: %d HTTP connections at once; closing "
                                   "new ones", most)  # fmt: skip
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._counting:
            self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (reset, timed out while written to): the client's
        problem, logged for debugging, not a traceback on stderr."""
        log.debug("metrics: connection from %s failed", client_address, exc_info=True)


class _RequestReader(io.RawIOBase):
    """The connection's bytes, read within the handler's deadlines: waiting for a
    request's first byte up to ``idle_timeout``, then the rest of its line and headers
    within ``message_timeout`` of that byte."""

    def __init__(self, connection: socket.socket, limits: ServerLimits) -> None:
        super().__init__()
        self.connection = connection
        self.limits = limits
        self.deadline: float | None = None  # None: between requests

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            timeout: float | None = self.limits.idle_timeout or None
        else:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("request not complete in time")
        self.connection.settimeout(timeout)
        count = self.connection.recv_into(buffer)
        if self.deadline is None and self.limits.message_timeout:
            self.deadline = time.monotonic() + self.limits.message_timeout
        return count


class _Handler(BaseHTTPRequestHandler):
    metrics: MetricsEndpoint
    server: _Server
    server_version = "vmstats"
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: read through the deadlines instead
        self._reader = _RequestReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = None  # waiting for the next request
        self._reader.limits = self.server.limits
        super().handle_one_request()

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
        self.connection.settimeout(self.server.limits.write_timeout or None)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)
