"""One QMP connection as a state machine: bytes in, reply bytes out (sans-I/O).

Mirrors QEMU 7.2's monitor: a greeting, capabilities negotiation (only
``qmp_capabilities`` works before it, anything else is CommandNotFound with QEMU's hint),
then command mode with ``id`` echo, and an error reply for every broken JSON message.
Replies are written as QEMU writes them, ending in CRLF.  Nothing here does I/O, so the
protocol is tested without sockets and the same session serves any transport.

Two ways to drive it, as h11 has: :meth:`QMPSession.receive` then :meth:`next_reply`
one reply at a time (what a server does, so that it can stop producing replies while a
client does not read them), or :meth:`receive_data` for every reply at once.
"""

from __future__ import annotations

from collections.abc import Coroutine
from enum import Enum
from functools import lru_cache
from typing import Any

from vmstats.qapi.dispatch import Dispatcher
from vmstats.qapi.errors import CommandNotFound, GenericError
from vmstats.qapi.json import RawJSON, dumps, dumps_exact
from vmstats.qapi.qdict import qdict_parsed
from vmstats.qmp.jsonstream import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_TOKENS,
    JSONStreamParser,
    Message,
)
from vmstats.qmp.monitor import Monitor

CAPABILITIES = ("oob",)

#: A reply line, or (for a command answered asynchronously, such as one forwarded to a
#: QEMU) a coroutine that makes it: the transport awaits it before the next reply.
Reply = bytes | Coroutine[Any, Any, bytes]


class SessionState(Enum):
    """Where a session is.  NEGOTIATION: only ``qmp_capabilities`` is served (anything
    else gets QEMU's hint); COMMAND: every command of the monitor is served."""

    NEGOTIATION = "negotiation"
    COMMAND = "command"


def encode_response(response: dict[str, Any]) -> bytes:
    """One reply line.  ``id`` may hold client floats, so it is written exactly.

    Pieces are encoded and joined once: a big ``return`` (hundreds of KiB for hundreds of
    vCPUs, already QEMU's text) is copied twice, not five times.
    """
    pieces: list[bytes] = [b"{"]
    for key, value in response.items():
        if len(pieces) > 1:
            pieces.append(b", ")
        if key == "id":
            text = dumps_exact(value)
        elif isinstance(value, RawJSON):
            text = value
        else:
            text = dumps(value)
        pieces += (dumps(key) + ": ").encode("ascii"), text.encode("ascii")
    pieces.append(b"}\r\n")
    return b"".join(pieces)


@lru_cache(maxsize=256)
def error_line(desc: str, error_class: str = GenericError.error_class) -> bytes:
    """A reply line for an error without ``id``; cached, since a flood of broken input
    repeats a few texts."""
    return encode_response({"error": {"class": error_class, "desc": desc}})


#: QEMU's reply to a well-formed JSON value that is not an object.
NOT_AN_OBJECT = error_line("QMP input must be a JSON object")


async def _encode_later(response: Coroutine[Any, Any, dict[str, Any]]) -> bytes:
    return encode_response(await response)


class QMPSession:
    """A QMP conversation with one client."""

    def __init__(
        self,
        monitor: Monitor,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.monitor = monitor
        self.state = SessionState.NEGOTIATION
        self.oob_enabled = False
        self._parser = JSONStreamParser(max_message_size, max_tokens)
        self._dispatcher: Dispatcher = monitor.dispatcher(self.qmp_capabilities, negotiated=False)

    @property
    def negotiated(self) -> bool:
        return self.state is SessionState.COMMAND

    def greeting(self) -> bytes:
        greeting = {
            "QMP": {"version": self.monitor.version_info(), "capabilities": list(CAPABILITIES)}
        }
        return (dumps(qdict_parsed(greeting)) + "\r\n").encode("ascii")

    # -- input ----------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Queue bytes from the client; :meth:`next_reply` answers them."""
        self._parser.receive_data(data)

    def next_reply(self) -> Reply | None:
        """The reply to the next complete message, or None.

        None with :attr:`buffered` non-zero means the parser stopped at the end of a slice
        of work: call again (after letting other clients run).  A coroutine must be
        awaited, and its line sent, before the next call (replies keep request order).
        """
        message = self._parser.next_message()
        return None if message is None else self._answer(message)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet lexed."""
        return self._parser.buffered

    @property
    def holding(self) -> int:
        """Bytes of client input held in memory (unread input and a message in progress)."""
        return self._parser.holding

    @property
    def in_message(self) -> bool:
        """Is a message half received (bytes of it arrived, its end did not)?"""
        return self._parser.in_message

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes from the client; return every reply to send, in order (synchronous
        commands only: a transport uses :meth:`next_reply`)."""
        replies = []
        for message in self._parser.feed(data):
            reply = self._answer(message)
            if not isinstance(reply, bytes):
                reply.close()
                raise TypeError("an asynchronous command: use next_reply()")
            replies.append(reply)
        return replies

    def receive_eof(self) -> list[bytes]:
        """The client closed its side: QEMU drops a half-received message without replying."""
        self._parser = JSONStreamParser(self._parser.max_size, self._parser.max_tokens)
        return []

    # -- answers --------------------------------------------------------------------

    def _answer(self, message: Message) -> Reply:
        if message.error is not None:
            return error_line(message.error)
        if not isinstance(message.value, dict):
            return NOT_AN_OBJECT
        negotiating = self.state is SessionState.NEGOTIATION
        response = self._dispatcher.respond(message.value, allow_oob=self.oob_enabled, wire=True)
        if not isinstance(response, dict):
            return _encode_later(response)
        error = response.get("error")
        if negotiating and error and error["class"] == CommandNotFound.error_class:
            error["desc"] = "Expecting capabilities negotiation with 'qmp_capabilities'"
        return encode_response(response)

    def qmp_capabilities(self, enable: list[str] | None = None) -> None:
        """Leave negotiation mode, enabling the capabilities asked for (QEMU's rules)."""
        if self.state is SessionState.COMMAND:
            raise CommandNotFound("Capabilities negotiation is already complete, command ignored")
        for capability in enable or ():
            if capability not in CAPABILITIES:
                raise GenericError(f"Capability '{capability}' not available with this monitor")
        self.oob_enabled = "oob" in (enable or ())
        self.state = SessionState.COMMAND
        self._dispatcher = self.monitor.dispatcher(self.qmp_capabilities, negotiated=True)
