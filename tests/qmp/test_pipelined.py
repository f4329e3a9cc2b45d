"""The pipelined QMP connection's protocol: replies put together from any pieces, events
skipped, errors given as the server's, and a connection that fails its read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vmstats.errors import ClientError, RemoteError
from vmstats.qmp.pipelined import Batch, Outcomes, Pipelined

GREETING = b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}}}\r\n'
REPLIES = (b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\r\n'
           b'{"return": [1, 2]}\r\n'
           b'{"error": {"class": "GenericError", "desc": "no such thing"}}\n'
           b'{ "return" :{"name":"web1"} }\n')  # fmt: skip
BATCH = Batch([("query-stats", {"target": "vm"}), ("query-nope", None), ("query-name", None)])


class Transport(asyncio.Transport):
    """What the protocol writes, kept; nothing sent anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connected() -> tuple[Pipelined, Transport]:
    conn = Pipelined("test.qmp", 1.0)
    transport = Transport()
    conn.connection_made(transport)
    conn.data_received(GREETING)
    conn._greeting = None  # what open() does once it has read the greeting
    return conn, transport


def test_replies_cut_anywhere_are_put_together_in_order_and_events_skipped() -> None:
    async def one(cut: int) -> Outcomes:
        conn, transport = connected()
        future = conn.ask(BATCH)
        assert transport.written == BATCH.wire
        conn.data_received(REPLIES[:cut])
        conn.data_received(REPLIES[cut:])
        return await future

    for cut in range(len(REPLIES) + 1):
        first, error, name = asyncio.run(one(cut))
        assert first == b"[1, 2]"
        assert isinstance(error, RemoteError)
        assert (error.error_class, error.desc, error.command) == (
            "GenericError", "no such thing", "query-nope")  # fmt: skip
        assert name == b'{"name":"web1"}'


def test_what_is_no_reply_fails_the_read_and_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fed(data: bytes) -> tuple[BaseException | None, Pipelined, Transport]:
        conn, transport = connected()
        future = conn.ask(BATCH)
        conn.data_received(data)
        await asyncio.wait([future], timeout=1)
        return future.exception() if future.done() else None, conn, transport

    error, conn, transport = asyncio.run(fed(b"not json\n"))
    assert isinstance(error, ClientError)
    assert str(error) == "query-stats: malformed reply from test.qmp"
    assert transport.closed
    assert not conn.usable
    monkeypatch.setattr(Pipelined, "line_limit", 64)
    error, _, transport = asyncio.run(fed(b"x" * 65))
    assert isinstance(error, ClientError)
    assert "sent a line longer than" in str(error)
    assert transport.closed


def test_a_connection_lost_mid_read_is_said_and_a_held_qemu_7_is_busy() -> None:
    import errno

    async def lost(exc: Exception | None) -> BaseException | None:
        conn, _ = connected()
        future = conn.ask(BATCH)
        conn.data_received(REPLIES[:40])
        conn.connection_lost(exc)
        with pytest.raises(ClientError):
            conn.ask(BATCH).result()
        return future.exception()

    closed = asyncio.run(lost(None))
    assert str(closed) == "QMP connection to test.qmp closed"
    held = asyncio.run(lost(OSError(errno.EINVAL, "Invalid argument")))
    assert "is another client connected?" in str(held)
