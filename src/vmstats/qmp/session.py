"""One QMP connection as a state machine: bytes in, reply bytes out (sans-I/O).

Mirrors QEMU 7.2's monitor: a greeting, capabilities negotiation (only
``qmp_capabilities`` works before it, anything else is CommandNotFound with QEMU's hint),
then command mode with ``id`` echo, and an error reply for every broken JSON message.
Replies are written as QEMU writes them, ending in CRLF.  Nothing here does I/O, so the
protocol is tested without sockets and the same session serves any transport.
"""

from __future__ import annotations

from typing import Any

from vmstats.qapi.dispatch import Dispatcher
from vmstats.qapi.errors import CommandNotFound, GenericError
from vmstats.qapi.json import dumps, dumps_exact
from vmstats.qapi.qdict import qdict_parsed
from vmstats.qmp.jsonstream import JSONStreamParser, Message
from vmstats.qmp.monitor import Monitor

#: Default limit of one message's size: far above any real request, far below QEMU's 64 MiB.
MAX_MESSAGE_SIZE = 1 << 20
CAPABILITIES = ("oob",)


def encode_response(response: dict[str, Any]) -> bytes:
    """One reply line.  ``id`` may hold client floats, so it is written exactly."""
    parts = (
        f"{dumps(key)}: {dumps_exact(value) if key == 'id' else dumps(value)}"
        for key, value in response.items()
    )
    return ("{" + ", ".join(parts) + "}\r\n").encode("ascii")


class QMPSession:
    """A QMP conversation with one client."""

    def __init__(self, monitor: Monitor, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.monitor = monitor
        self.negotiated = False
        self.oob_enabled = False
        self._parser = JSONStreamParser(max_message_size)
        self._dispatcher: Dispatcher = monitor.dispatcher(self.qmp_capabilities, negotiated=False)

    def greeting(self) -> bytes:
        greeting = {
            "QMP": {"version": self.monitor.version_info(), "capabilities": list(CAPABILITIES)}
        }
        return (dumps(qdict_parsed(greeting)) + "\r\n").encode("ascii")

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes from the client; return the reply lines to send, in order."""
        return [self._answer(m) for m in self._parser.feed(data)]

    def receive_eof(self) -> list[bytes]:
        """The client closed its side: QEMU drops what is pending without replying."""
        self._parser = JSONStreamParser(self._parser.max_size)
        return []

    def _answer(self, message: Message) -> bytes:
        if message.error is not None:
            return encode_response({"error": GenericError(message.error).to_qmp()})
        negotiating = not self.negotiated
        response = self._dispatcher.dispatch(message.value, allow_oob=self.oob_enabled, wire=True)
        error = response.get("error")
        if negotiating and error and error["class"] == CommandNotFound.error_class:
            error["desc"] = "Expecting capabilities negotiation with 'qmp_capabilities'"
        return encode_response(response)

    def qmp_capabilities(self, enable: list[str] | None = None) -> None:
        """Leave negotiation mode, enabling the capabilities asked for (QEMU's rules)."""
        if self.negotiated:
            raise CommandNotFound("Capabilities negotiation is already complete, command ignored")
        for capability in enable or ():
            if capability not in CAPABILITIES:
                raise GenericError(f"Capability '{capability}' not available with this monitor")
        self.oob_enabled = "oob" in (enable or ())
        self.negotiated = True
        self._dispatcher = self.monitor.dispatcher(self.qmp_capabilities, negotiated=True)
