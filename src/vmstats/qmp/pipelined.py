"""A QMP connection whose replies the protocol collects itself: what a reader of many
VMs uses.

``top`` and the exporter read every VM of a host at each refresh: 256 VMs are 256 reads a
second.  Read through a stream, each VM costs a task, a timer and a wake-up per reply
line, and asyncio's own work was most of what ``top`` spent (docs/benchmarks.md).  Here
the requests of a read go out in one write, and the lines that come back are split and
matched to them as they arrive (:meth:`Pipelined.data_received`), into one future per
read: a refresh writes to every VM, then awaits their futures together, with one
deadline for all of them (:func:`vmstats.reader.reading.read_all`).

A connection to one of vmstats' own servers (many clients at once) is kept between
reads; a QEMU's monitor serves one client at a time, so its reader lets it go after
every read (:class:`vmstats.reader.reading.QmpReader`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vmstats.errors import ClientError, RemoteError
from vmstats.qmp.client import (
    LINE_LIMIT,
    Request,
    busy,
    connection_failed,
    greeting_of,
    line_too_long,
    open_transport,
    peer_pid,
    reply_of,
    request_bytes,
)

Outcomes = list[bytes | RemoteError]


class Batch:
    """Requests sent together, encoded once: a refresh sends the same ones every time."""

    def __init__(self, requests: Sequence[Request]) -> None:
        self.commands = [command for command, _ in requests]
        self.wire = request_bytes(requests)


class Pipelined(asyncio.Protocol):
    """A connection (:meth:`open`); :meth:`ask` one batch at a time."""

    line_limit = LINE_LIMIT  # the longest line taken

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.version: dict[str, Any] = {}  # the greeting's
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no line end
        self._greeting: asyncio.Future[bytes] | None = self.loop.create_future()
        self._due: list[str] = []  # the commands whose replies are still to come, in order
        self._outcomes: Outcomes = []
        self._reply: asyncio.Future[Outcomes] | None = None
        self._error: ClientError | None = None  # why it can be used no more

    @classmethod
    async def open(cls, address: str, timeout: float) -> Pipelined:
        """Connect and read the greeting, within ``timeout`` each; the caller sends
        ``qmp_capabilities`` with its first batch (one write, one round trip)."""
        conn = cls(address, timeout)
        await open_transport(address, timeout, lambda: conn)
        try:
            assert conn._greeting is not None
            conn.version = greeting_of(await conn.within(conn._greeting), address)
            conn._greeting = None
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def peer_pid(self) -> int | None:
        """The pid of the process serving a unix socket (``SO_PEERCRED``), else None."""
        return peer_pid(self._transport.get_extra_info("socket") if self._transport else None)

    async def within(self, future: asyncio.Future[Any]) -> Any:
        """``future``'s result within the timeout; else the connection is let go."""
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            self.expire()
            raise busy(self.address, self.timeout) from None

    @property
    def usable(self) -> bool:
        """Open, in step, and on the running loop (a connection made on another loop, as
        one ``asyncio.run`` per read makes, cannot be used)."""
        return (self._error is None and self._reply is None
                and self.loop is asyncio.get_running_loop())  # fmt: skip

    def ask(self, batch: Batch) -> asyncio.Future[Outcomes]:
        """Send ``batch``: the future of each command's return value as the server wrote
        it, or the error it answered; :class:`ClientError` if the connection failed."""
        future: asyncio.Future[Outcomes] = self.loop.create_future()
        if self._error is not None or self._transport is None:
            future.set_exception(self._error or ClientError(f"not connected to {self.address}"))
            return future
        if self._reply is not None:
            raise ClientError(f"{self.address}: a read is under way already")
        self._due, self._outcomes, self._reply = list(batch.commands), [], future
        self._transport.write(batch.wire)
        return future

    def expire(self) -> None:
        """The replies did not come in time: the read fails, and the connection (out of
        step now) is closed."""
        self._fail(busy(self.address, self.timeout))

    def close(self) -> None:
        self._fail(connection_failed(self.address, self.timeout))

    # -- protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", self._scanned)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = self._scanned = end + 1
            self._line(line)
            if self._error is not None:
                return
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self.line_limit:
            self._fail(line_too_long(self.address))

    def _line(self, line: bytes) -> None:
        if self._greeting is not None:
            if not self._greeting.done():
                self._greeting.set_result(line)
            return
        command = self._due[0] if self._due else "(no request)"
        try:
            outcome = reply_of(line, command, self.address)
        except ClientError as exc:
            self._fail(exc)
            return
        if outcome is None:
            return  # an event
        if not self._due:
            self._fail(ClientError(f"{self.address} sent a reply to no request"))
            return
        del self._due[0]
        self._outcomes.append(outcome)
        if not self._due and self._reply is not None:
            reply, self._reply = self._reply, None
            if not reply.done():
                reply.set_result(self._outcomes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        failed = exc if isinstance(exc, OSError) else None
        self._fail(connection_failed(self.address, self.timeout, failed))

    def _fail(self, error: ClientError) -> None:
        """Fail what waits, and be usable no more."""
        if self._error is None:
            self._error = error
        for waiting in (self._greeting, self._reply):
            if waiting is not None and not waiting.done():
                waiting.set_exception(error)
                waiting.exception()  # retrieved: a read given up on does not log it
        self._reply = None
        if self._transport is not None:
            self._transport.close()
