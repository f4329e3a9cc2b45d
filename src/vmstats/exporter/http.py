"""The ``/metrics`` endpoint: HTTP/1.1 on the event loop that reads the VMs, with content
negotiation as prometheus_client does it (classic text or OpenMetrics, gzip when asked).

HTTP is spoken by h11 (sans-I/O, as our QMP session is): bytes in, events out, and this
module only moves bytes and applies the limits.  One concurrency model for the whole
daemon: the QMP sockets, the VMs' reads and ``/metrics`` share one loop, and a scrape
reads every VM at once (:func:`vmstats.exporter.scrape.scrape`).

The daemon runs privileged and any local user can connect, so the endpoint is bounded as
its QMP sockets are (:class:`ServerLimits`, asked for each new connection: the daemon
rereads them on SIGHUP): so many connections at once (more are closed at once), a
request's line and headers within ``message_timeout`` of its first byte and within h11's
16 KiB (a client sending a byte now and then holds nothing for long), a kept-alive
connection silent at most ``idle_timeout``, a reply taken within ``write_timeout``.
Requests that come while a scrape runs share it: clients scraping in a loop cost one
scrape at a time, not one each.

With a web config (:mod:`.webconfig`, exporter-toolkit's format) it speaks TLS and asks
for basic authentication (:mod:`.auth`): the handshake runs within ``message_timeout``
like any request, and a plain-HTTP request to the TLS port gets a plain 400.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11
from prometheus_client.exposition import choose_encoder

from vmstats.exporter.auth import BasicAuth, TlsLayer, looks_like_tls
from vmstats.exporter.compress import GzipPages
from vmstats.exporter.exposition import Exposition
from vmstats.exporter.scrape import Scrape, scrape
from vmstats.exporter.webconfig import WebConfig
from vmstats.limits import RateLimitedLog, ServerLimits, fd_budget, listen_backlog
from vmstats.reader.reading import Reader
from vmstats.slices import TimeSlices

log = logging.getLogger(__name__)

#: Seconds a VM may take to be read in one scrape (Prometheus' own scrape timeout is 10 s).
DEFAULT_SCRAPE_TIMEOUT = 2.0
#: A reply's bytes buffered for a client before it must read (then ``write_timeout`` runs).
WRITE_HIGH = 256 * 1024


class MetricsEndpoint:
    """``http://HOST:PORT/metrics`` for the VMs ``readers`` gives, on the running loop."""

    def __init__(self, readers: Callable[[], Iterable[Reader]],
                 timeout: float = DEFAULT_SCRAPE_TIMEOUT,
                 limits: Callable[[], ServerLimits] = ServerLimits) -> None:  # fmt: skip
        """``limits`` gives the limits in force (asked per connection: the daemon's are
        reread on SIGHUP); by default :class:`ServerLimits`' defaults."""
        self.readers = readers
        self.timeout = timeout
        self.limits = limits
        self.exposition = Exposition()
        self.gzip = GzipPages()
        self._running: asyncio.Future[Scrape] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_HttpConnection] = set()
        self._fds = fd_budget()  # connections are kept below the fd limit too
        self.refusals = RateLimitedLog(log)
        self.web = WebConfig()
        self.auth = BasicAuth({})

    def use_web_config(self, web: WebConfig) -> None:
        """TLS and basic auth from now on (new connections take the new TLS settings)."""
        self.auth.close()
        self.web, self.auth = web, BasicAuth(web.users)

    @property
    def scheme(self) -> str:
        return "http" if self.web.tls is None else "https"

    async def page(self, openmetrics: bool) -> tuple[bytes, bytes]:
        """One scrape's text, in two parts (:meth:`Exposition.render_parts`): the scrape
        running now if there is one, else a new one; each VM's text written on the
        loop's time in slices (:mod:`vmstats.slices`), its other clients answered
        between them."""
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(scrape(self.readers(), self.timeout))
            running.add_done_callback(self._finished)
        found = await asyncio.shield(running)  # a client gone does not cancel the others'
        slices = TimeSlices()  # the loop answers others between two VMs' text
        policy = self.exposition.policy
        blocks = []
        for reading in found.readings:
            blocks.append(self.exposition.vm_blocks(reading))
            await slices.pause()
        if self.exposition.policy is not policy:  # new --series came meanwhile (SIGHUP):
            return self.exposition.render_parts(found, openmetrics)  # made again, one policy
        return self.exposition.render_parts(found, openmetrics, blocks)

    def _finished(self, future: asyncio.Future[Scrape]) -> None:
        if self._running is future:  # the next request scrapes afresh
            self._running = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0).  OSError if the address is taken."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpConnection(self), host, port, backlog=listen_backlog(), reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    def admit(self, connection: _HttpConnection) -> bool:
        """Count a new connection in, unless the endpoint is full (then it is closed)."""
        most = min(self.limits().max_connections, self._fds)
        if len(self._connections) >= most:
            self.refusals.warning("full", "metrics: %d HTTP connections at once; closing "
                                  "new ones", most)  # fmt: skip
            return False
        self._connections.add(connection)
        return True

    def release(self, connection: _HttpConnection) -> None:
        self._connections.discard(connection)

    async def close(self) -> None:
        self.auth.close()
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
            self._server = None


class _HttpConnection(asyncio.Protocol):
    """One client: h11 parses, this applies the limits and answers one request at a time
    (reading pauses while a reply is made)."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.limits = endpoint.limits()
        self.http = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None  # idle, message or write deadline
        self._request: h11.Request | None = None
        self._started = False  # a byte of the next request has come: its deadline runs
        self._answering: asyncio.Task[None] | None = None
        context = endpoint.web.tls
        self.tls = None if context is None else TlsLayer(context)
        self._first = True  # no byte seen yet: with TLS, the first tells HTTP from TLS

    # -- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.endpoint.admit(self):
            transport.abort()
            self.transport = None
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._deadline(self.limits.idle_timeout, "idle")

    def data_received(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._deadline(self.limits.message_timeout, "a request not complete in time")
        if self.tls is not None:
            data = self._decrypt(data)
            if self.transport is None or not data:
                return
        self.http.receive_data(data)
        self._next()

    def _decrypt(self, data: bytes) -> bytes:
        """The plaintext of what a TLS client sent (handshake replies sent meanwhile)."""
        assert self.tls is not None
        assert self.transport is not None
        if self._first:
            self._first = False
            if not looks_like_tls(data):
                self.tls = None  # plain HTTP to the TLS port: say so in plain HTTP
                self._refuse(400, "Client sent an HTTP request to an HTTPS server.")
                return b""
        try:
            plain = self.tls.receive(data)
        except ssl.SSLError as exc:
            log.debug("metrics: TLS failed: %s", exc)
            self.transport.write(self.tls.outgoing())  # the alert, if any
            self.close()
            return b""
        self.transport.write(self.tls.outgoing())
        if self.tls.closed:
            self.close()
        return plain

    def eof_received(self) -> bool:
        self.http.receive_data(b"")
        self._next()
        return self._answering is not None  # half-closed after its request: answer it

    def pause_writing(self) -> None:  # the client does not take its reply
        self._deadline(self.limits.write_timeout, "a reply not read in time")

    def resume_writing(self) -> None:
        self._cancel_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.release(self)
        self._cancel_timer()
        if self._answering is not None:
            self._answering.cancel()
        self.transport = None

    # -- requests -------------------------------------------------------------------------

    def _next(self) -> None:
        """Take h11's events until it needs more bytes or a request is complete."""
        while self.transport is not None and self._answering is None:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                self._cancel_timer()
                self.transport.pause_reading()
                self._answering = asyncio.ensure_future(self._answer_or_close(self._request))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                self.close()
                return

    async def _answer_or_close(self, request: h11.Request) -> None:
        """Answer, or close the connection if the reply cannot be made: a client is
        never left waiting on a reply that will not come."""
        try:
            await self._answer(request)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the client must not wait
            log.error("metrics: no reply could be made (%s: %s); connection closed",
                      type(exc).__name__, exc)  # fmt: skip
            self.abort()

    async def _answer(self, request: h11.Request) -> None:
        headers = dict(request.headers)
        status, content_type, body = await self._page(request, headers)
        extra: list[tuple[str, str]] = []
        if b"gzip" in headers.get(b"accept-encoding", b""):
            head, *tail = body
            body = (await self.endpoint.gzip.gzipped(head, b"".join(tail), content_type),)
            extra.append(("Content-Encoding", "gzip"))
        if status == 401:
            extra.append(("WWW-Authenticate", 'Basic realm="vmstats"'))
        self._send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase, headers=[
            ("Content-Type", content_type), ("Content-Length", str(sum(map(len, body)))),
            ("Server", "vmstats"), *extra]))  # fmt: skip
        if request.method != b"HEAD":
            for part in body:  # a page's parts are not joined: 23 MB copied for nothing
                self._send(h11.Data(data=part))
        self._send(h11.EndOfMessage())
        self._answering = self._request = None
        self._done()

    async def _page(self, request: h11.Request, headers: dict[bytes, bytes]
                    ) -> tuple[int, str, tuple[bytes, ...]]:  # fmt: skip
        """The status, content type and body (in parts) of the reply to ``request``."""
        if not await self.endpoint.auth.allows(headers.get(b"authorization")):
            return 401, "text/plain; charset=utf-8", (b"Unauthorized\n",)
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", (b"only GET (and HEAD) here\n",)
        if urlsplit(request.target.decode("ascii", "replace")).path not in ("/metrics", "/"):
            return 404, "text/plain; charset=utf-8", (b"not found: try /metrics\n",)
        _, content_type = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
        try:
            body = await self.endpoint.page(content_type.startswith("application/openmetrics"))
        except Exception as exc:  # a scrape that failed as a whole: say so, keep serving
            log.exception("scrape failed")
            return 500, "text/plain; charset=utf-8", (f"scrape failed: {exc}\n".encode(),)
        return 200, content_type, body

    def _done(self) -> None:
        """A reply is written: wait for the next request (keep-alive), or close."""
        if self.transport is None:
            return
        if self.http.our_state is h11.MUST_CLOSE or self.http.their_state is not h11.DONE:
            self.close()
            return
        self.http.start_next_cycle()
        self._started = False
        if not self.transport.get_write_buffer_size():
            self._deadline(self.limits.idle_timeout, "idle")
        self.transport.resume_reading()
        self._next()

    def _refuse(self, status: int, why: str) -> None:
        """A request h11 cannot take (malformed, headers over 16 KiB): its status, then
        the connection is closed."""
        log.debug("metrics: refused a request: %s", why)
        if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{why}\n".encode()
            self._send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase, headers=[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))), ("Connection", "close")]))  # fmt: skip
            self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
        self.close()

    def _send(self, event: Any) -> None:
        data = self.http.send(event)
        if data and self.transport is not None:
            if self.tls is not None:
                self.tls.send(data)
                data = self.tls.outgoing()
            self.transport.write(data)

    # -- deadlines and closing ------------------------------------------------------------

    def _deadline(self, seconds: float, why: str) -> None:
        """Close the connection in ``seconds`` (0: never), unless something cancels it."""
        self._cancel_timer()
        if seconds:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expired, why)

    def _expired(self, why: str) -> None:
        self._timer = None
        log.debug("metrics: connection closed: %s", why)
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close once what is written is sent (within ``write_timeout``)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            self._deadline(self.limits.write_timeout or 1.0, "a reply not read in time")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
