"""The server side of a QMP connection: how its replies reach its transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.qmp.connection import WRITE_HIGH, Connection
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import QMPServer
from vmstats.stats import StatsRegistry

PIPELINED = (b'{"execute":"qmp_capabilities","id":1}{"execute":"query-name","id":2}'
             b'{"execute":"query-stats","arguments":{"target":"vcpu"},"id":3}')  # fmt: skip


class Transport(asyncio.Transport):
    """What the connection writes, one entry per write; ``buffered``: what the transport
    says it holds unsent."""

    def __init__(self, buffered: int = 0) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.closing = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def writes_for(data: bytes, buffered: int = 0) -> list[bytes]:
    """The writes a connection makes for ``data`` come in one read (after its greeting)."""

    async def run() -> list[bytes]:
        registry = StatsRegistry()
        registry.add_stats_callbacks(FakeProvider())
        server = QMPServer(Monitor(registry, Machine.from_paths(vcpu_path(i) for i in range(3))))
        transport = Transport(buffered)
        connection = Connection(server)
        connection.connection_made(transport)
        transport.writes.clear()  # the greeting
        connection.data_received(data)
        return transport.writes

    return asyncio.run(run())


def ids(writes: list[bytes]) -> list[int]:
    return [json.loads(line)["id"] for line in b"".join(writes).splitlines()]


def test_pipelined_requests_are_answered_in_one_write() -> None:
    """A client that pipelines (``top`` sends two requests to each VM at every refresh,
    in one write) gets the replies of one read in one write, in order: one wake-up of
    the client and one ``send`` of the daemon's for them, not one each."""
    writes = writes_for(PIPELINED)
    assert len(writes) == 1
    assert ids(writes) == [1, 2, 3]


def test_replies_are_written_at_once_when_the_transport_holds_a_full_buffer() -> None:
    """Held together, replies must not raise what a connection holds past its bound: with
    the transport's buffer at WRITE_HIGH already, each reply goes to the transport at
    once (which pauses the connection), none waits beside it."""
    writes = writes_for(PIPELINED, buffered=WRITE_HIGH)
    assert len(writes) == 3
    assert ids(writes) == [1, 2, 3]
