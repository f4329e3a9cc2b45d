"""How every cost of ``vmstats serve`` grows with the host: fleets of 1, 16, 64 and 256
VMs x 8 vCPUs laid out as QEMU >= 8.1 lays them out (:mod:`vmstats.testing.fleet`), one
run per row (docs/benchmarks.md).

    python benchmarks/scale_bench.py [--sizes 1,16,64,256] [--vcpus 8] [--seconds 30]
                                     [--churn-cycles 60] [--top] [--tracepoints EVENTS]
                                     [--run-dir-parent DIR] [--settle 20]

Per size: the fleet started and left to settle for ``--settle`` seconds (a daemon starts
on a host whose VMs run already; for some seconds after 256 VMMs start, the same first
scan takes up to 40 % more CPU); the daemon's first scan (the one that serves the fleet)
and its steady scans (its own debug log), its RSS and fds, its CPU with no reader over
``--seconds`` (scans every 5 s); one unfiltered ``query-stats`` through a VM's socket
(to the reply's last byte, median of 20); a full ``/metrics`` scrape (median of 5; time
to the last byte, bytes, series) with values standing still, and after every vCPU of
every VM ran a round (every value moved), then both again asking for gzip as Prometheus
does; with ``--top``, ``vmstats top`` watching every VM at 1 s, batch ``--json`` and
full-screen in tmux; then churn (one VM stopped and one started per second for
``--churn-cycles`` cycles): the daemon's CPU, its RSS and fds after against before, and
how long each new VM took to be served. Run as root.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vmstats.cli.options import non_negative_float
from vmstats.testing.fleet import Fleet
from vmstats.testing.hostile import cpu_seconds, fd_count, rss_bytes, wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import RawQMP, stop_process

_SCAN = re.compile(
    r"scan: ([0-9.]+) ms \(CPU ([0-9.]+) ms, ([0-9.]+) of it in the kernel\), "
    r"(\d+) VMs served"
)


def served(run_dir: Path) -> set[str]:
    try:
        return {row["name"] for row in json.loads((run_dir / "vms.json").read_text())}
    except (OSError, ValueError):
        return set()


def scans(log: Path) -> list[tuple[float, float, float, int]]:
    """Each scan's duration, CPU and the kernel's part of it (ms), and the VMs served
    after it, from the daemon's debug log."""
    return [(float(m[1]), float(m[2]), float(m[3]), int(m[4]))
            for m in _SCAN.finditer(log.read_text())]  # fmt: skip


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core ``pid`` used over ``seconds``."""
    return cpu_shares([pid], seconds)[0]


def cpu_shares(pids: list[int], seconds: float) -> list[float]:
    """The share of one core each of ``pids`` used over the same ``seconds``."""
    before, started = [cpu_seconds(pid) for pid in pids], time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - started
    return [(cpu_seconds(pid) - then) / took for pid, then in zip(pids, before, strict=True)]


def query_ms(path: Path, rounds: int = 20) -> float:
    qmp = RawQMP(path, timeout=60)
    try:
        qmp.negotiate()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            qmp.request(b'{"execute":"query-stats","arguments":{"target":"vcpu"}}')
            times.append(time.perf_counter() - started)
    finally:
        qmp.close()
    return statistics.median(times) * 1000


#: The client of :func:`queries_during_scrapes`, a process of its own (in this one it
#: would wait for the scrapes' decompression and parsing, not for the daemon): it queries
#: every 10 ms until its stdin closes, then prints its waits in seconds.
ASKER = """
import json, select, sys, time
from vmstats.testing.qemu import RawQMP
qmp = RawQMP(sys.argv[1], timeout=60)
qmp.negotiate()
print("ready", flush=True)
times = []
while not select.select([sys.stdin], [], [], 0.01)[0]:
    started = time.perf_counter()
    qmp.request(b'{"execute":"query-stats","arguments":{"target":"vcpu"}}')
    times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def queries_during_scrapes(path: Path, port: int, fleet: Fleet,
                           rounds: int = 5) -> dict[str, float]:  # fmt: skip
    """A client querying one VM every 10 ms while Prometheus-like scrapes (gzip) of every
    VM, each after every value moved, run: its wait (ms), median, 99th percentile and
    longest.  The daemon answers every socket from one loop: what a scrape costs the
    other clients of the host."""
    asker = subprocess.Popen([sys.executable, "-c", ASKER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert asker.stdin is not None
    assert asker.stdout is not None
    try:
        if asker.stdout.readline() != "ready\n":
            raise RuntimeError("the client of the scrapes could not connect")
        scrapes(port, fleet, rounds, gzipped=True)
        asker.stdin.close()
        times = sorted(json.loads(asker.stdout.read() or "[]"))
    finally:
        stop_process(asker)
    if not times:
        raise RuntimeError("the client of the scrapes made no query (see its error above)")
    return {
        "query during scrapes, median ms": statistics.median(times) * 1000,
        "p99 ms": times[int(len(times) * 0.99)] * 1000,
        "max ms": times[-1] * 1000,
    }


def scrape(port: int, gzipped: bool = False) -> tuple[float, int, int]:
    """One scrape: ms to the last byte, bytes, series.  ``gzipped``: asked for gzip, as
    Prometheus asks (decompressed after the timing)."""
    asked = {"Accept-Encoding": "gzip"} if gzipped else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=asked)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as page:
        body = page.read()
        encoding = page.headers.get("Content-Encoding")
    took = (time.perf_counter() - started) * 1000
    if encoding == "gzip":
        body = gzip.decompress(body)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return took, len(body), series


def scrapes(port: int, fleet: Fleet | None, rounds: int = 5,
            gzipped: bool = False) -> tuple[float, int, int]:  # fmt: skip
    """Median of ``rounds`` scrapes; with ``fleet``, every vCPU runs a round before each."""
    results = []
    for _ in range(rounds):
        if fleet is not None:
            fleet.tick()
        results.append(scrape(port, gzipped))
    return (statistics.median(r[0] for r in results), results[-1][1], results[-1][2])


def top_cpu(run_dir: Path, seconds: float, daemon: int) -> dict[str, float]:
    """``vmstats top`` watching every VM at 1 s: batch ``--json`` (and the daemon
    answering it, over the same seconds), and full-screen."""
    top = [sys.executable, "-m", "vmstats", "top", str(run_dir), "-s", "1"]
    out: dict[str, float] = {}
    batch = subprocess.Popen([*top, "--json"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(5)  # connections made, schemas read
        out["top --json"], out["daemon answering it"] = cpu_shares([batch.pid, daemon], seconds)
    finally:
        stop_process(batch)
    if shutil.which("tmux"):
        session = f"scale{os.getpid()}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                        " ".join(top)], check=True)  # fmt: skip
        try:
            time.sleep(5)
            pane = subprocess.run(["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                                  capture_output=True, text=True).stdout.split()[0]  # fmt: skip
            child = subprocess.run(["pgrep", "-P", pane], capture_output=True,
                                   text=True).stdout.split()  # fmt: skip
            out["top full-screen"] = cpu_share(int(child[0]) if child else int(pane), seconds)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    return out


def churn(fleet: Fleet, run_dir: Path, daemon: int, cycles: int,
          rate: float = 1.0) -> dict[str, float]:  # fmt: skip
    """One VM stopped and one started, ``rate`` times a second: the daemon's CPU and
    growth, and how long each new VM took to be served."""
    rss, fds, cpu = rss_bytes(daemon), fd_count(daemon), cpu_seconds(daemon)
    started = time.monotonic()
    born: dict[str, float] = {}
    latencies = []
    missed = 0  # stopped before it was served (a fleet smaller than a scan interval's churn)
    for cycle in range(cycles):
        oldest = next(iter(fleet.vms))
        missed += born.pop(oldest, None) is not None
        fleet.stop(oldest)
        (name,) = fleet.start(1)
        born[name] = time.monotonic()
        while time.monotonic() < started + (cycle + 1) / rate or (cycle == cycles - 1 and born):
            for name, at in list(born.items()):  # served: its socket is there
                if (run_dir / f"{name}.qmp").exists():
                    latencies.append(time.monotonic() - at)
                    del born[name]
            if born and time.monotonic() - min(born.values()) > 60:
                raise RuntimeError(f"{sorted(born)} not served within 60 s")
            time.sleep(0.02)
    elapsed = time.monotonic() - started
    wait_for(lambda: served(run_dir) == set(fleet.vms), timeout=30)
    return {"churn CPU %": (cpu_seconds(daemon) - cpu) / elapsed * 100,
            "served after, median s": statistics.median(latencies),
            "served after, max s": max(latencies),
            "stopped before served": missed,
            "RSS growth MB": (rss_bytes(daemon) - rss) / 2**20,
            "fd growth": fd_count(daemon) - fds}  # fmt: skip


def one_size(vms: int, vcpus: int, args: argparse.Namespace) -> dict[str, object]:
    row: dict[str, object] = {"VMs": vms, "vCPUs": vms * vcpus}
    tmp = Path(tempfile.mkdtemp(prefix="vmstats-scale-", dir=args.run_dir_parent))
    run_dir, log = tmp / "run", tmp / "serve.log"
    port = free_port()
    with Fleet(vcpus, prefix=f"s{vms}") as fleet:
        begun = time.monotonic()
        fleet.start(vms)
        row["fleet start s"] = round(time.monotonic() - begun, 1)
        time.sleep(args.settle)
        with log.open("w") as stderr:
            daemon = subprocess.Popen([sys.executable, "-m", "vmstats", "-vv", "serve",
                                       "--run-dir", str(run_dir), "--metrics", f"127.0.0.1:{port}",
                                       *(["--tracepoints", args.tracepoints]
                                         if args.tracepoints else [])],
                                      stderr=stderr)  # fmt: skip
        try:
            if not wait_for(lambda: set(fleet.vms) <= served(run_dir), timeout=300):
                raise RuntimeError(f"not every VM served: see {log}")
            first = next(scan for scan in scans(log) if scan[3] >= vms)
            row["first scan ms"], row["first scan CPU ms"], row["of it kernel ms"] = first[:3]
            time.sleep(1)
            row["idle CPU %"] = cpu_share(daemon.pid, args.seconds) * 100
            steady = [scan[0] for scan in scans(log)][1:]
            row["steady scan ms"] = statistics.median(steady) if steady else None
            row["RSS MB"] = rss_bytes(daemon.pid) / 2**20
            row["fds"] = fd_count(daemon.pid)
            row["query ms"] = query_ms(run_dir / f"{next(iter(fleet.vms))}.qmp")
            scrape(port)  # the first builds the text cache
            still = scrapes(port, None)
            row["scrape still ms"], row["scrape bytes"], row["series"] = still
            row["scrape changed ms"] = scrapes(port, fleet)[0]
            scrape(port, gzipped=True)  # the first compresses the still page
            row["scrape still gzip ms"] = scrapes(port, None, gzipped=True)[0]
            row["scrape changed gzip ms"] = scrapes(port, fleet, gzipped=True)[0]
            row.update(queries_during_scrapes(run_dir / f"{next(iter(fleet.vms))}.qmp",
                                              port, fleet))  # fmt: skip
            if args.top:
                row.update(
                    {
                        f"{k} %": v * 100
                        for k, v in top_cpu(run_dir, args.seconds, daemon.pid).items()
                    }
                )
            if args.churn_cycles and vms >= 16:  # smaller, a VM lives less than a scan
                row.update(churn(fleet, run_dir, daemon.pid, args.churn_cycles, args.churn_rate))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,16,64,256")
    parser.add_argument("--vcpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--churn-cycles", type=int, default=60)
    parser.add_argument("--churn-rate", type=float, default=1.0, help="cycles a second")
    parser.add_argument("--top", action="store_true")
    parser.add_argument("--settle", type=non_negative_float, default=20.0,
                        help="seconds between the fleet's start and the daemon's")  # fmt: skip
    parser.add_argument(
        "--tracepoints", default="", help="the daemon's --tracepoints (default: its own default)"
    )
    parser.add_argument(
        "--run-dir-parent", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the daemon's run directory is made: a tmpfs by default, as /run is on "
             "systemd hosts (a socket's bind costs 4x more on ext4)")  # fmt: skip
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        rows.append(one_size(size, args.vcpus, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    header = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                 else str(v) for v in (row.get(k, "") for k in header)]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
