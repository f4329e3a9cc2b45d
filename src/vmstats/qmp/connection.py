"""One client of the QMP server: an asyncio protocol around its :class:`QMPSession`, with
the flow control between its socket and its replies (see :mod:`.server` for the bounds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any

from vmstats.qapi.errors import INTERNAL_ERROR
from vmstats.qmp.session import QMPSession, error_line

if TYPE_CHECKING:
    from vmstats.qmp.server import QMPServer

log = logging.getLogger("vmstats.qmp.server")  # one logger for the server and its clients

#: The write buffer above which a connection produces no more replies until it drains.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
#: Seconds of work one connection may do per turn of the event loop.
TURN = 0.002


class Phase(Enum):
    """Where a connection is in its life.  Transitions, and what makes them::

        OPEN      -> DRAINING  the client sent EOF: what it sent is answered, then close
        OPEN      -> CLOSING   close(): timeouts, server shutdown, the VM gone
        DRAINING  -> CLOSING   the last reply is written
        any       -> CLOSED    the transport is gone (the peer left, or abort())

    Only OPEN and DRAINING produce replies; CLOSING only flushes what is written (and is
    aborted if the client does not take it within ``write_timeout``).
    """

    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


class _Replies:
    """The replies of one pump turn, written together: at the end of the turn, or at
    once when they and the transport's buffer reach WRITE_HIGH (the transport then
    pauses the turn), so what a connection holds stays bounded as it was with a write
    per reply: WRITE_HIGH and the one reply being written."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: list[bytes] = []
        self.size = 0

    def add(self, reply: bytes) -> None:
        self.held.append(reply)
        self.size += len(reply)
        if self.size + self.transport.get_write_buffer_size() >= WRITE_HIGH:
            self.write()

    def write(self) -> None:
        """Write what is held, unless the peer went away during the turn."""
        if self.held and not self.transport.is_closing():
            self.transport.write(b"".join(self.held))  # one reply: joined is itself
        self.held.clear()
        self.size = 0


class Connection(asyncio.Protocol):
    """One client: a session, and the flow control between its socket and its replies.

    Beside its :class:`Phase`, a connection has two flow-control flags that mirror its
    transport: ``_reading`` (False while input is paused: work is left over, or replies
    wait to be written) and ``_writable`` (False while the client does not take its
    replies); and at most one piece of work in flight: a scheduled pump turn or a reply
    made elsewhere (``_pump_handle``, ``_pending``).
    """

    def __init__(self, server: QMPServer) -> None:
        self.server = server
        limits = server.limits
        self.session = QMPSession(
            server.monitor, max_message_size=limits.max_message_size, max_tokens=limits.max_tokens
        )
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.OPEN
        self._reading = True
        self._writable = True
        self._pump_handle: asyncio.Handle | None = None
        self._pending: asyncio.Task[None] | None = None  # a reply being made elsewhere
        self._write_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._last_input = time.monotonic()
        self._message_since: float | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.server.connection_made(self)
        transport.write(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        """Answer at once, within one TURN (no extra turn of the loop for a request that
        fits in one read); reading pauses only while work is left over."""
        if self.phase is not Phase.OPEN:
            return
        self._last_input = time.monotonic()
        self.session.receive(data)
        if self._pump_handle is None and self._pending is None and self._writable:
            self._pump()
        left_over = self._pump_handle is not None or self._pending is not None
        if self._reading and (left_over or not self._writable or self.session.buffered):
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading = False
            self._schedule()

    def eof_received(self) -> bool:
        if self.phase is Phase.OPEN:
            self.phase = Phase.DRAINING
        self._schedule()
        return True  # keep our side open until the replies to what came are written

    def pause_writing(self) -> None:
        self._writable = False
        timeout = self.server.limits.write_timeout
        if timeout and self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._writable = True
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        for handle in (self._pump_handle, self._write_timer, self._abort_timer, self._pending):
            if handle is not None:
                handle.cancel()
        self.server.connection_lost(self)

    # -- work ---------------------------------------------------------------------------

    @property
    def answering(self) -> bool:
        """Does this connection still produce replies?"""
        return self.phase in (Phase.OPEN, Phase.DRAINING)

    def _schedule(self) -> None:
        if self._pump_handle is None and self._pending is None and self.answering:
            self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Answer what has arrived, one reply at a time, for at most one TURN.  The
        replies of a turn go out in one write, up to WRITE_HIGH: a client that pipelines
        its requests (``top`` sends two to each VM at every refresh) reads them in one
        wake-up, not one each, and the daemon makes one ``send`` for them."""
        self._pump_handle = None
        transport = self.transport
        if not self.answering or transport is None or transport.is_closing():
            return
        deadline = time.perf_counter() + TURN
        replies = _Replies(transport)
        while self._writable:
            reply = self.session.next_reply()
            if reply is not None and not isinstance(reply, bytes):
                replies.write()  # those before it go first
                self._await_reply(reply)  # the pump goes on when it is written
                return
            if reply is not None:
                replies.add(reply)  # written at once at WRITE_HIGH: may pause writing
            elif not self.session.buffered:
                replies.write()
                self._input_done()
                return
            if time.perf_counter() >= deadline:
                replies.write()
                self._schedule()
                return
        replies.write()  # Not writable: resume_writing() schedules the rest.

    def _await_reply(self, reply: Coroutine[Any, Any, bytes]) -> None:
        """Send a reply made asynchronously (a forwarded command), then go on."""

        async def send() -> None:
            try:
                line = await reply
            except Exception:  # the session turns failures into error replies: a bug
                log.exception("an asynchronous reply failed")
                line = error_line(INTERNAL_ERROR)
            self._pending = None
            if self.transport is not None and self.answering:
                self.transport.write(line)
                self._schedule()

        self._pending = asyncio.get_running_loop().create_task(send())

    def _input_done(self) -> None:
        assert self.transport is not None
        if self.session.in_message:
            if self._message_since is None:
                self._message_since = time.monotonic()
        else:
            self._message_since = None
        if self.phase is Phase.DRAINING:
            self.session.receive_eof()
            self.close()
        elif not self._reading:
            self._reading = True
            self.transport.resume_reading()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        log.info("QMP client dropped: its replies were not read for %s s",
                 self.server.limits.write_timeout)  # fmt: skip
        self.abort()

    def check_timeouts(self, now: float) -> None:
        limits = self.server.limits
        if limits.message_timeout and self._message_since is not None:
            if now - self._message_since > limits.message_timeout:
                log.info("QMP client dropped: a message left half-sent for %s s",
                         limits.message_timeout)  # fmt: skip
                self.close()
        elif limits.idle_timeout and now - self._last_input > limits.idle_timeout:
            log.info("QMP client dropped: idle for %s s", limits.idle_timeout)
            self.close()

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close after the replies already written are sent (abort if they are not read)."""
        if not self.answering or self.transport is None:
            return
        self.phase = Phase.CLOSING
        self.transport.close()
        timeout = self.server.limits.write_timeout or 1.0
        self._abort_timer = asyncio.get_running_loop().call_later(timeout, self.abort)

    def abort(self) -> None:
        """Drop the connection now, and its buffers with it."""
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSING
        if self.transport is not None:
            self.transport.abort()
