"""Hostile and well-behaved QMP clients, and a demo server to aim them at.

Shared by the reliability tests (bounded, in CI) and ``benchmarks/soak.py`` (longer), so
both exercise the same behaviours and measure them the same way: the server's RSS and fd
count from ``/proc``, a well-behaved client's round-trip latencies, and the server's
stderr (which must never hold a traceback).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from vmstats.testing.qemu import RawQMP, stop_process

QUERY_VCPU = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
QUERY_SCHEMA = b'{"execute":"query-qmp-schema"}'
NEGOTIATE = b'{"execute":"qmp_capabilities"}'


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


#: A process that fills its fd table (all its limit allows) and keeps changing it, so
#: that a scan that read every fd would read all of it again each time.
FLOODER = """
import os, resource, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(hard - 100)]
print("ready", flush=True)
while True:
    extra = os.open("/dev/null", os.O_RDONLY)
    time.sleep(0.01)
    os.close(extra)
    time.sleep(0.01)
"""


def stats_fd_count(pid: int) -> int:
    """How many KVM stats fds a process holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += "stats" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return count


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes, and whether it closed within ``timeout``
    (EOF or a reset).  A test that expects a close asserts the flag: a read that merely
    timed out must not pass for one."""
    deadline = time.monotonic() + timeout
    pieces: list[bytes] = []
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(1 << 16)
            if not chunk:
                return b"".join(pieces), True
            pieces.append(chunk)
    except ConnectionResetError:
        return b"".join(pieces), True
    except TimeoutError:
        pass
    return b"".join(pieces), False


def requests_until_closed(client: RawQMP, request: bytes, limit: int = 100
                          ) -> tuple[list[bytes], bool]:  # fmt: skip
    """Send ``request`` again and again until the server closes the connection: the
    replies, and whether it closed within ``limit`` requests.  Each reply is awaited
    within the client's timeout, whose expiry is an error here, never a close."""
    replies = []
    try:
        for _ in range(limit):
            replies.append(client.request(request))
    except ConnectionError:
        return replies, True
    return replies, False


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class DemoServer:
    """``vmstats demo --headless --qmp SOCK`` in a subprocess, stderr kept in a file.

    ``preexec`` runs in the child before exec (to lower its fd limit, for example);
    ``verbose`` logs at INFO (why each client was dropped).
    """

    def __init__(
        self,
        vcpus: int = 4,
        extra: Sequence[str] = (),
        preexec: Callable[[], None] | None = None,
        rate: float = 50.0,
        verbose: bool = False,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vmstats-hostile-")
        self.path = Path(self._tmp.name) / "qmp.sock"
        self.stderr_path = Path(self._tmp.name) / "stderr"
        self.args = [sys.executable, "-m", "vmstats", *(["-v"] if verbose else []),
                     "demo", "--headless", "--vcpus",
                     str(vcpus), "--rate", str(rate), "--qmp", str(self.path), *extra]  # fmt: skip
        self.preexec = preexec
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self) -> DemoServer:
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=stderr,
                                         stdin=subprocess.DEVNULL, text=True,
                                         preexec_fn=self.preexec)  # fmt: skip
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline()
        if not self.ready_line.startswith("vmstats demo: ready"):
            self.proc.wait(10)
            raise RuntimeError(f"the demo did not start: {self.stderr()}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def vm_pid(self) -> int:
        """The VM's own process (the child that runs the vCPUs)."""
        return int(self.ready_line.split("VM process ")[1].split(",")[0])

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Stop the demo with ``sig``; its exit status (None: it had to be killed)."""
        assert self.proc is not None
        return stop_process(self.proc, sig, timeout)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self._tmp.cleanup()


def connect(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def send_for(socks: Sequence[socket.socket], data: bytes, seconds: float) -> list[int]:
    """Send ``data`` on every socket, round-robin, as far as the peer takes it within
    ``seconds``; return the bytes sent on each.

    Never blocks longer: a server applying backpressure stops taking bytes, and a
    hostile client then just waits with the rest unsent.
    """
    for sock in socks:
        sock.setblocking(False)
    sent = [0] * len(socks)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(n < len(data) for n in sent):
        progress = False
        for i, sock in enumerate(socks):
            if sent[i] >= len(data):
                continue
            try:
                sent[i] += sock.send(data[sent[i] : sent[i] + (1 << 16)])
                progress = True
            except BlockingIOError:
                pass
            except OSError:
                sent[i] = len(data)
        if not progress:
            time.sleep(0.005)
    return sent


def _unread_sockets(path: Path, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = connect(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        out.append(sock)
    return out


def half_sent_messages(path: Path, count: int = 10, commas: int = 1_048_500,
                       seconds: float = 3.0) -> list[socket.socket]:  # fmt: skip
    """Issue #8's first attack: ``count`` clients each send ``[`` and a million commas,
    then wait, never reading."""
    socks = _unread_sockets(path, count)
    send_for(socks, b"[" + b"," * commas, seconds)
    return socks


def never_read(path: Path, request: bytes, count: int = 10, requests: int = 10_000,
               seconds: float = 3.0) -> list[socket.socket]:  # fmt: skip
    """``count`` clients each send ``requests`` requests and never read a reply."""
    socks = _unread_sockets(path, count)
    send_for(socks, NEGOTIATE + request * requests, seconds)
    return socks


class Flooder:
    """A thread that sends ``chunk`` over and over and drains the replies, so that the
    server does all the work the chunk asks for (a client that does not read is stopped
    by backpressure instead)."""

    def __init__(self, path: Path, chunk: bytes) -> None:
        self.sock = connect(path)
        self.chunk = chunk
        self.stop_event = threading.Event()
        self.sent = 0
        self.received = 0
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._drain, daemon=True)]  # fmt: skip

    def _send(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop_event.is_set():
                self.sock.sendall(self.chunk)
                self.sent += len(self.chunk)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop_event.is_set() and (data := self.sock.recv(1 << 16)):
                self.received += len(data)

    def __enter__(self) -> Flooder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for thread in self._threads:
            thread.join(5)


def round_trips(path: Path, count: int, request: bytes = QUERY_VCPU,
                timeout: float = 10.0) -> list[float]:  # fmt: skip
    """A well-behaved client: ``count`` requests one after the other; the latencies."""
    client = RawQMP(path, timeout=timeout)
    try:
        client.negotiate()
        out = []
        for _ in range(count):
            started = time.perf_counter()
            reply = client.request(request)
            out.append(time.perf_counter() - started)
            if not reply.startswith(b'{"return"'):
                raise AssertionError(f"unexpected reply: {reply[:200]!r}")
        return out
    finally:
        client.close()


def connect_latencies(path: Path, count: int) -> list[float]:
    """Fresh clients one after the other: connect to greeting, the latencies."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        client = RawQMP(path, timeout=10)
        out.append(time.perf_counter() - started)
        client.close()
    return out


@contextlib.contextmanager
def sockets(
    opened: Iterator[socket.socket] | Sequence[socket.socket],
) -> Iterator[list[socket.socket]]:
    """Keep sockets open for a block, close them all after."""
    held = list(opened)
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text or "Exception in callback" in text


def lower_fd_limit(limit: int) -> Callable[[], None]:
    """A ``preexec`` for :class:`DemoServer`: RLIMIT_NOFILE of ``limit`` in the child."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
