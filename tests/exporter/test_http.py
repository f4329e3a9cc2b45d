"""The /metrics endpoint against clients that misbehave: too many, too slow, silent, or
all at once.  A real endpoint on a real loopback port; the VMs are a reader that counts
its reads (what is tested is the HTTP side)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from vmstats.exporter.http import MetricsEndpoint
from vmstats.limits import ServerLimits
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import Sample
from vmstats.testing.hostile import read_until_closed, wait_for


class SlowVm:
    """A VM whose every read takes ``delay`` seconds; counts its reads."""

    name = "slow"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.reads = 0

    async def read(self) -> VmReading:
        self.reads += 1
        await asyncio.sleep(self.delay)
        return VmReading("slow", [], Sample(0.0, {}), {}, {"source": "test"})


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[MetricsEndpoint, SlowVm, int]]:
    """An endpoint on a free port, its loop in a thread; ``limits`` from the test's mark."""
    mark = request.node.get_closest_marker("limits")
    limits = ServerLimits(**(mark.kwargs if mark else {}))
    vm = SlowVm(float(mark.args[0]) if mark and mark.args else 0.0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    metrics = MetricsEndpoint(lambda: [vm], loop, 5.0, lambda: limits)
    port = metrics.start("127.0.0.1", 0)
    yield metrics, vm, port
    metrics.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return bytes(reply.read())


def scrapes(port: int) -> bool:
    """Does a fresh client get a scrape?"""
    try:
        return b"vmstats_up" in get(port)
    except OSError:
        return False


def test_keep_alive_serves_several_scrapes_on_one_connection(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    _, vm, port = endpoint
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    socks = []
    for _ in range(2):
        connection.request("GET", "/metrics")
        reply = connection.getresponse()
        assert reply.status == 200
        assert b"vmstats_up" in reply.read()
        socks.append(connection.sock)
    connection.close()
    assert socks[0] is socks[1]
    assert vm.reads == 2


@pytest.mark.limits(max_connections=2)
def test_connections_past_the_limit_are_closed_at_once(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    _, _, port = endpoint
    held = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(2)]
    for connection in held:  # each accepted: it got a scrape, and is kept alive
        connection.request("GET", "/metrics")
        assert connection.getresponse().read()
    with socket.create_connection(("127.0.0.1", port)) as extra:
        extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        data, closed = read_until_closed(extra)
        assert closed
        assert data == b""
    for connection in held:
        connection.close()
    assert wait_for(lambda: scrapes(port))  # the slots are free again


@pytest.mark.limits(message_timeout=0.5)
def test_a_request_sent_a_byte_at_a_time_is_cut_at_the_deadline(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    """Slowloris: each byte comes well within any per-read timeout; the request as a
    whole does not come within ``message_timeout`` of its first byte."""
    _, vm, port = endpoint
    request = b"GET /metrics HTTP/1.1\r\nHost: a-very-slow-client\r\n" * 20  # 50 s of it
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _cut_while_sending_slowly(sock, request)
    assert vm.reads == 0


def _cut_while_sending_slowly(sock: socket.socket, request: bytes) -> bool:
    """Send ``request`` a byte every 50 ms: was the connection cut before its end?"""
    for byte in request:
        try:
            sock.sendall(bytes([byte]))
        except ConnectionError:
            return True
        time.sleep(0.05)  # the pace of the slow client, not a wait for the server
    return False


@pytest.mark.limits(idle_timeout=0.5)
def test_a_silent_connection_is_closed_after_idle_timeout(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    _, _, port = endpoint
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        _, closed = read_until_closed(sock, 30)
        took = time.monotonic() - started
    assert closed
    assert took >= 0.4  # not before the idle timeout (however slow the machine, not sooner)


@pytest.mark.limits(0.5)
def test_requests_during_a_scrape_share_it(endpoint: tuple[MetricsEndpoint, SlowVm, int]) -> None:
    """Eight clients at once cost one read of each VM, not eight; a request after it
    scrapes afresh."""
    _, vm, port = endpoint
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda _: get(port), range(8)))
    assert all(b'vmstats_up{vm="slow"} 1.0' in page for page in pages)
    assert vm.reads < 3  # 8 without sharing
    before = vm.reads
    get(port)
    assert vm.reads == before + 1
