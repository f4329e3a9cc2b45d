"""Soak test of the QMP server: many clients, every hostile client, fuzzed input, VM death.

Runs against ``vmstats demo --headless --qmp`` (4 vCPUs) and prints a markdown table
for docs/reliability.md: for each attack, how often it was tried, whether everything
held, the server's peak RSS and fds, and a well-behaved client's latency meanwhile.

    .venv/bin/python benchmarks/soak.py [--clients 100] [--queries 1000] [--fuzz 100000]

Targets (issue #8): RSS under 200 MB throughout, a well-behaved client's p99 under
100 ms while any one hostile client runs, no traceback on stderr, and fds and RSS back
near the baseline at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vmstats.testing.hostile import (
    NEGOTIATE,
    QUERY_SCHEMA,
    QUERY_VCPU,
    DemoServer,
    Flooder,
    connect,
    connect_latencies,
    fd_count,
    half_sent_messages,
    has_traceback,
    kill,
    lower_fd_limit,
    never_read,
    percentile,
    round_trips,
    rss_bytes,
    sockets,
)
from vmstats.testing.qemu import RawQMP

MiB = 1 << 20
DEEP_ID = b'{"execute":"query-version","id":' + b"[" * 1023 + b"]" * 1023 + b"}"


@dataclass
class Row:
    name: str
    tries: str
    held: bool = True
    peak_rss: int = 0
    fds_after: int | None = 0  # None: the attack ran on a server of its own
    p99_ms: float = float("nan")
    median_ms: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def markdown(self, baseline_fds: int) -> str:
        held = "yes" if self.held else "**no**"
        fds = (
            "-"
            if self.fds_after is None
            else f"{self.fds_after} ({self.fds_after - baseline_fds:+d})"
        )
        latency = f"{self.median_ms:.2f} / {self.p99_ms:.2f}"
        return (f"| {self.name} | {self.tries} | {held} | {self.peak_rss / MiB:.0f} MiB | {fds} | "
                f"{latency} | {'; '.join(self.notes)} |")  # fmt: skip


class PeakRSS:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_fds(pid: int, target: int, timeout: float = 40.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fd_count(pid) > target:
        time.sleep(0.1)
    return fd_count(pid)


def attack(demo: DemoServer, name: str, tries: str, baseline_fds: int,
           hostile: Callable[[], contextlib.AbstractContextManager[object]],
           good_queries: int = 300) -> Row:  # fmt: skip
    """Run ``hostile`` while a well-behaved client queries; measure it all."""
    row = Row(name, tries)
    with PeakRSS(demo.pid) as rss:
        with hostile():
            latencies = round_trips(demo.path, good_queries)
        row.peak_rss = rss.peak
    row.p99_ms = percentile(latencies, 0.99) * 1e3
    row.median_ms = statistics.median(latencies) * 1e3
    row.fds_after = wait_for_fds(demo.pid, baseline_fds)
    row.held = row.peak_rss < 200 * MiB and row.p99_ms < 100 and row.fds_after <= baseline_fds
    return row


@contextlib.contextmanager
def held_sockets(make: Callable[[], list[socket.socket]]) -> Iterator[list[socket.socket]]:
    with sockets(make()) as held:
        yield held


def many_clients(demo: DemoServer, clients: int, queries: int, baseline_fds: int) -> Row:
    row = Row(f"{clients} clients x {queries} vcpu queries, at once", f"{clients * queries:,}")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            got = round_trips(demo.path, queries, timeout=60)
        except Exception as exc:  # noqa: BLE001 -- a client thread's failure is reported, not lost
            with lock:
                errors.append(repr(exc))
            return
        with lock:
            latencies.extend(got)

    with PeakRSS(demo.pid) as rss:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        row.peak_rss = rss.peak
    row.p99_ms = percentile(latencies, 0.99) * 1e3
    row.median_ms = statistics.median(latencies) * 1e3
    row.fds_after = wait_for_fds(demo.pid, baseline_fds)
    row.held = not errors and row.peak_rss < 200 * MiB and row.fds_after <= baseline_fds
    row.notes.append("latency under 100-way concurrency (not a p99 target)")
    if errors:
        row.notes.append(f"{len(errors)} client errors: {sorted(set(errors))}")
    return row


VALID = [
    b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":[{"provider":"kvm","names":["exits"]}]}}',
    b'{"execute":"query-stats","arguments":{"target":"vm"},"id":{"a":[1,2.5,null]}}',
    b'{"execute":"query-stats-schemas","arguments":{"provider":"kvm"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats vcpu exits"}}',
    b'{"execute":"query-qmp-schema","id":"x"}',
    b"{'execute':'query-version'}",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random mutation: flip, insert, delete, duplicate or splice bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[pos:pos] = bytes([rng.choice(b"{}[]:,\"'\\\x00\xff 0-ex")])
        elif kind == 2 and out:
            del out[pos : pos + rng.randint(1, 8)]
        elif kind == 3:
            out[pos:pos] = out[pos : pos + rng.randint(1, 16)]
        else:
            out[pos:pos] = rng.choice(VALID)[: rng.randint(0, 40)]
    return bytes(out)


def fuzz(demo: DemoServer, inputs: int, baseline_fds: int, seed: int = 8) -> Row:
    """``inputs`` mutated requests over 8 connections; every reply line must be JSON."""
    row = Row("fuzzed and mutated requests", f"{inputs:,}")
    rng = random.Random(seed)
    bad_lines = 0
    sync = b'\xff\n{"execute":"query-version","id":"sync"}'
    with PeakRSS(demo.pid) as rss:
        for _ in range(8):
            client = RawQMP(demo.path, timeout=30)
            client.send(NEGOTIATE)
            client.read_line()
            count = inputs // 8
            for start in range(0, count, 500):
                chunk = b"".join(
                    mutate(rng, rng.choice(VALID)) for _ in range(min(500, count - start))
                )
                client.send(chunk + sync)
                while b'"sync"' not in (line := client.read_line()):
                    try:
                        reply = json.loads(line)
                        if not ("return" in reply or "error" in reply):
                            bad_lines += 1
                    except ValueError:
                        bad_lines += 1
            client.close()
        row.peak_rss = rss.peak
    latencies = round_trips(demo.path, 300)
    row.p99_ms = percentile(latencies, 0.99) * 1e3
    row.median_ms = statistics.median(latencies) * 1e3
    row.fds_after = wait_for_fds(demo.pid, baseline_fds)
    row.held = bad_lines == 0 and row.peak_rss < 200 * MiB and row.fds_after <= baseline_fds
    row.notes.append(f"{bad_lines} malformed reply lines")
    return row


def fd_exhaustion(args: argparse.Namespace) -> Row:
    row = Row("fd exhaustion (RLIMIT_NOFILE 96, 300 connects)", "300 connects", fds_after=None)
    with DemoServer(extra=["--max-connections", "100000"], preexec=lower_fd_limit(96)) as demo:
        with PeakRSS(demo.pid) as rss:
            held = []
            for _ in range(300):
                with contextlib.suppress(OSError):
                    held.append(connect(demo.path, timeout=2))
            with sockets(held):
                time.sleep(1)
            row.peak_rss = rss.peak
        time.sleep(1)
        latencies = round_trips(demo.path, 300)
        demo.stop()
        stderr = demo.stderr()
    row.p99_ms = percentile(latencies, 0.99) * 1e3
    row.median_ms = statistics.median(latencies) * 1e3
    row.held = not has_traceback(stderr) and len(stderr.splitlines()) <= 3
    row.notes.append(f"{len(stderr.splitlines())} log lines")
    return row


def vm_death(args: argparse.Namespace) -> Row:
    row = Row("VM killed (SIGKILL) under 10 querying clients", "1", fds_after=None)
    with DemoServer(rate=0) as demo:
        clients = [RawQMP(demo.path, timeout=10) for _ in range(10)]
        for client in clients:
            client.negotiate()
        killed = time.monotonic()
        kill(demo.vm_pid)
        last_success = 0.0
        errors = 0
        for client in clients:
            with contextlib.suppress(OSError, ConnectionError):
                for _ in range(100):
                    reply = client.request(QUERY_VCPU)
                    if reply.startswith(b'{"return"'):
                        last_success = max(last_success, time.monotonic() - killed)
                    else:
                        errors += b"the VM is gone" in reply
            client.close()
        status = demo.stop()
        stderr = demo.stderr()
    row.held = status == 1 and stderr.count("\n") == 1 and not has_traceback(stderr)
    row.notes.append(f"last value served {last_success * 1e3:.1f} ms after the kill; "
                     f"{errors} error replies, then EOF; exit {status}, "
                     "1 line on stderr")  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--fuzz", type=int, default=100_000)
    args = parser.parse_args()
    rows: list[Row] = []
    with DemoServer(extra=["--write-timeout", "5"]) as demo:
        round_trips(demo.path, 50)  # warm up
        time.sleep(0.5)  # the warm-up connection is closed
        baseline_fds, baseline_rss = fd_count(demo.pid), rss_bytes(demo.pid)
        rows.append(attack(demo, "none (baseline)", "300", baseline_fds, contextlib.nullcontext))
        rows.append(many_clients(demo, args.clients, args.queries, baseline_fds))
        attacks: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager[object]]]] = [
            ("10 half-sent messages of 1 MiB of commas", "10 x 1 MiB",
             lambda: held_sockets(lambda: half_sent_messages(demo.path, 10))),
            ("10 clients sending 10,000 vcpu queries, never reading", "100,000",
             lambda: held_sockets(lambda: never_read(demo.path, QUERY_VCPU, 10))),
            ("10 clients sending 10,000 query-qmp-schema, never reading", "100,000",
             lambda: held_sockets(lambda: never_read(demo.path, QUERY_SCHEMA, 10))),
            ("a client flooding `1,1,1,...` (reading)", "continuous",
             lambda: Flooder(demo.path, b"1," * 32768)),
            ("a client flooding `[[[[...` (reading)", "continuous",
             lambda: Flooder(demo.path, b"[" * 65536)),
            ("a client flooding 64 KiB strings (reading)", "continuous",
             lambda: Flooder(demo.path, b'"' + b"x" * 65534 + b'"')),
            ("a client flooding 1,023-deep ids (reading)", "continuous",
             lambda: Flooder(demo.path, DEEP_ID)),
            ("a client flooding vcpu queries (reading)", "continuous",
             lambda: Flooder(demo.path, NEGOTIATE + QUERY_VCPU * 200)),
        ]  # fmt: skip
        for name, tries, hostile in attacks:
            rows.append(attack(demo, name, tries, baseline_fds, hostile))
        burst = Row("1,000 connects, one after the other (connect to greeting)", "1,000")
        latencies = connect_latencies(demo.path, 1000)
        burst.p99_ms = percentile(latencies, 0.99) * 1e3
        burst.median_ms = statistics.median(latencies) * 1e3
        burst.fds_after = wait_for_fds(demo.pid, baseline_fds)
        burst.peak_rss = rss_bytes(demo.pid)
        burst.held = burst.fds_after == baseline_fds
        rows.append(burst)
        rows.append(fuzz(demo, args.fuzz, baseline_fds))
        end_rss, end_fds = rss_bytes(demo.pid), fd_count(demo.pid)
        demo.stop()
        stderr = demo.stderr()
    rows.append(fd_exhaustion(args))
    rows.append(vm_death(args))
    columns = ["attack", "tries", "held", "peak RSS", "fds after (vs baseline)",
               "good client median / p99 ms", "notes"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown(baseline_fds))
    print()
    tracebacks = "yes" if has_traceback(stderr) else "none"
    print(f"Baseline: RSS {baseline_rss / MiB:.0f} MiB, {baseline_fds} fds.  End of the run: "
          f"RSS {end_rss / MiB:.0f} MiB, {end_fds} fds.  Tracebacks on stderr: "
          f"{tracebacks} ({len(stderr.splitlines())} lines).")  # fmt: skip
    for line in stderr.splitlines()[:5]:
        print(f"    stderr: {line}")


if __name__ == "__main__":
    main()
