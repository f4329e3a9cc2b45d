"""A vmstats QMP server on a real socket, in a background event loop, for interop tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.limits import ServerLimits
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import QMPServer
from vmstats.stats import StatsRegistry


def fake_server(limits: ServerLimits | None = None) -> QMPServer:
    """A server of the fake provider's VM (3 vCPUs), not listening yet."""
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    return QMPServer(Monitor(registry, Machine.from_paths(vcpu_path(i) for i in range(3))),
                     limits)  # fmt: skip


class ServerThread:
    def __init__(self, path: Path, limits: ServerLimits | None = None) -> None:
        self.server = fake_server(limits)
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start_unix(self.path), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "qmp.sock") as server:
        yield server
