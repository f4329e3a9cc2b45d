"""The /metrics endpoint against clients that misbehave: too many, too slow, silent, or
all at once.  A real endpoint on a real loopback port; the VMs are a reader that counts
its reads (what is tested is the HTTP side)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import itertools
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from vmstats.exporter.http import MetricsEndpoint
from vmstats.exporter.series import SeriesPolicy
from vmstats.limits import ServerLimits
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import Sample
from vmstats.testing.hostile import read_until_closed, wait_for


class SlowVm:
    """A VM whose every read takes ``delay`` seconds; counts its reads.  With ``vcpus``
    its page is large (a scalar stat per vCPU)."""

    name = "slow"

    def __init__(self, delay: float = 0.0, vcpus: int = 0) -> None:
        self.delay = delay
        self.reads = 0
        values = {("kvm", "vcpu", f"/machine/cpu[{i}]"): {"exits": i} for i in range(vcpus)}
        self.sample = Sample(0.0, values)

    async def read(self) -> VmReading:
        self.reads += 1
        await asyncio.sleep(self.delay)
        return VmReading("slow", [], self.sample, {}, {"source": "test"})


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[MetricsEndpoint, SlowVm, int]]:
    """An endpoint on a free port, its loop in a thread; ``limits`` from the test's mark."""
    mark = request.node.get_closest_marker("limits")
    limits = ServerLimits(**(mark.kwargs if mark else {}))
    vm = SlowVm(
        float(mark.args[0]) if mark and mark.args else 0.0,
        int(mark.args[1]) if mark and len(mark.args) > 1 else 0,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    metrics = MetricsEndpoint(lambda: [vm], 5.0, lambda: limits)
    port = asyncio.run_coroutine_threadsafe(metrics.start("127.0.0.1", 0), loop).result(10)
    yield metrics, vm, port
    asyncio.run_coroutine_threadsafe(metrics.close(), loop).result(10)
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


def exchange(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; what came back, and whether the server closed after it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return read_until_closed(sock, 30)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
    (b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 20000, b"431"),  # never ends
    (b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
     b"405"),
    (b"GET /nothing HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"404"),
])  # fmt: skip
def test_requests_it_cannot_serve_get_their_status_and_nothing_else(
    endpoint: tuple[MetricsEndpoint, SlowVm, int], request_bytes: bytes, status: bytes
) -> None:
    _, vm, port = endpoint
    reply, closed = exchange(port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status + b" ")
    assert closed
    assert vm.reads == 0  # no VM was read for it
    assert scrapes(port)  # and the endpoint serves on


def test_head_gives_the_headers_of_a_scrape(endpoint: tuple[MetricsEndpoint, SlowVm, int]) -> None:
    _, _, port = endpoint
    reply, closed = exchange(
        port, b"HEAD /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: " in head.lower()
    assert body == b""
    assert closed


def without_duration(page: bytes) -> list[bytes]:
    return [line for line in page.splitlines() if b"scrape_duration" not in line]


@pytest.mark.limits(0.0, 5_000)
def test_a_client_that_asks_for_gzip_gets_the_page_at_every_scrape(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    """Prometheus asks for gzip: each reply is the whole page of that scrape (its own
    duration too), though the VMs' part is compressed once while it stands still."""
    _, vm, port = endpoint
    plain = get(port)
    assert len(plain) > 200_000
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    pages = []
    for _ in range(3):
        connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        reply = connection.getresponse()
        assert reply.getheader("Content-Encoding") == "gzip"
        body = reply.read()
        assert int(reply.getheader("Content-Length", "0")) == len(body)
        pages.append(gzip.decompress(body))
    connection.close()
    assert vm.reads == 4
    for page in pages:
        assert without_duration(page) == without_duration(plain)
        assert page.count(b"\nvmstats_scrape_duration_seconds ") == 1


@pytest.mark.limits(0.0, 5_000)
def test_a_reply_that_cannot_be_made_closes_its_connection_and_no_other(
    endpoint: tuple[MetricsEndpoint, SlowVm, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip that fails (zlib out of memory) ends that client's connection at once,
    not after its timeouts (it had none left: it waited for ever); others go on."""
    metrics, _, port = endpoint

    async def failing(head: bytes, tail: bytes = b"", kind: object = None) -> bytes:
        raise MemoryError("zlib")

    monkeypatch.setattr(metrics.gzip, "gzipped", failing)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        connection.getresponse()
    connection.close()
    assert scrapes(port)


@pytest.mark.limits(0.0, 100_000, write_timeout=1.0)
def test_a_client_that_never_reads_its_reply_is_dropped(
    endpoint: tuple[MetricsEndpoint, SlowVm, int],
) -> None:
    """A page far over the kernel's buffers (7 MB; loopback TCP buffers up to 4 MB of
    it), asked for and never read: the connection is dropped after ``write_timeout``,
    and another client is served meanwhile."""
    metrics, _, port = endpoint
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", port))
    hog.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    assert scrapes(port)  # served while the hog's reply waits
    assert wait_for(lambda: metrics.connections == 0, timeout=30)  # never read: dropped
    hog.close()


class InstantVm:
    """A VM read without waiting (as the daemon reads its VMs: from stats fds in
    process), whose reads go in ``events``."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events
        values = {("kvm", "vcpu", f"/machine/cpu[{i}]"): {"exits": i} for i in range(4)}
        self.sample = Sample(0.0, values)

    async def read(self) -> VmReading:
        self.events.append("read")
        return VmReading(self.name, [], self.sample, {}, {"source": "test"})


def sliced_endpoint(monkeypatch: pytest.MonkeyPatch) -> tuple[MetricsEndpoint, list[str]]:
    """An endpoint for 20 :class:`InstantVm`, with slices of 0 s of work: its events are
    each VM's read (``read``) and each VM's text written (``text``)."""
    monkeypatch.setattr("vmstats.slices.SLICE", 0.0)
    events: list[str] = []
    vms = [InstantVm(f"vm{i}", events) for i in range(20)]
    metrics = MetricsEndpoint(lambda: vms, 5.0)
    write = metrics.exposition.vm_blocks

    def written(reading: VmReading) -> object:
        events.append("text")
        return write(reading)

    monkeypatch.setattr(metrics.exposition, "vm_blocks", written)
    return metrics, events


def test_a_scrape_of_many_vms_lets_the_loop_turn_between_two_vms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every other client shares the loop (all the VMs' sockets): a scrape reads each VM,
    and writes each VM's text, on a turn of the loop of its own (a slice of 0 s here)
    instead of keeping the loop for the whole scrape."""
    metrics, events = sliced_endpoint(monkeypatch)

    async def scrape_beside_another_client() -> bytes:
        page = asyncio.ensure_future(metrics.page(False))
        while not page.done():
            events.append("turn")  # another client answered: one per turn of the loop
            await asyncio.sleep(0)
        return page.result()[0]

    head = asyncio.run(scrape_beside_another_client())
    assert head.count(b'vm="vm19"') == 4  # the whole page, each VM's vCPUs
    for step in ("read", "text"):
        at = [i for i, event in enumerate(events) if event == step]
        assert len(at) == 20
        assert all("turn" in events[a:b] for a, b in itertools.pairwise(at)), events


def test_new_series_options_during_a_scrape_give_a_page_of_one_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGHUP may bring new ``--series`` while a scrape writes its VMs' text between two
    turns of the loop: the page is all of one policy (here every VM summed over its
    vCPUs), never the first VMs per vCPU and the others per VM."""
    metrics, events = sliced_endpoint(monkeypatch)

    async def scrape_with_a_sighup_in_the_middle() -> bytes:
        page = asyncio.ensure_future(metrics.page(False))
        while events.count("text") < 5:
            await asyncio.sleep(0)
        metrics.exposition.policy = SeriesPolicy(vcpus="vm")  # what SIGHUP does
        return (await page)[0]

    head = asyncio.run(scrape_with_a_sighup_in_the_middle())
    assert b'vm="vm0"' in head
    assert b'vm="vm19"' in head
    assert b"vcpu=" not in head
