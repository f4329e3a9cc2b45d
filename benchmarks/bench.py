"""query-stats latency and observer effect: vmstats (demo VM) vs QEMU 7.2 and QEMU 10.0.

Run: ``./bench.sh`` (or ``.venv/bin/python benchmarks/bench.py --help``).  Prints markdown.

Method (also in docs/benchmarks.md): for each vCPU count N, our server (``vmstats demo
--headless --qmp``, its own process; the guest runs in a child process), a QEMU 7.2 and a
QEMU 10.0 (``-accel kvm -smp N``, no disk, guest running; 10.0 unpacked from
bookworm-backports) are started side by side, with the floor: a trivial asyncio server
answering each read with one fixed line (``floor.py``).  One raw QMP client per system
sends the same request bytes; calls rotate between the systems (and which goes first) so
machine drift hits all alike.  After a warm-up, each case is timed ``--calls`` times from
send to the last byte of the reply (decoding is not timed); we report median, p10, p90 and
the ratios of medians.  The observer effect is read from the vCPU stats themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from vmstats.testing.qemu import QemuVM, RawQMP, qemu_unavailable_reason
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

CASES = {
    "vcpu, unfiltered": {"target": "vcpu"},
    "vcpu, names=[exits]": {
        "target": "vcpu",
        "providers": [{"provider": "kvm", "names": ["exits"]}],
    },
    "vcpu, one by path": {"target": "vcpu", "vcpus": ["/machine/unattached/device[0]"]},
    "vm": {"target": "vm"},
}
SCHEMAS = "query-stats-schemas"


def request(case: str) -> bytes:
    if case == SCHEMAS:
        return b'{"execute":"query-stats-schemas"}'
    return json.dumps({"execute": "query-stats", "arguments": CASES[case]}).encode()


@contextmanager
def vmstats_server(vcpus: int, rate: float) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmstats-bench-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmstats",
                "demo",
                "--headless",
                "--vcpus",
                str(vcpus),
                "--rate",
                str(rate),
                "--qmp",
                str(sock),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"vmstats demo did not start: {line!r}")
        try:
            yield sock
        finally:
            proc.terminate()
            proc.wait(30)


@contextmanager
def floor_server() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmstats-floor-") as tmp:
        sock = Path(tmp) / "floor.sock"
        floor = Path(__file__).with_name("floor.py")
        proc = subprocess.Popen([sys.executable, str(floor), str(sock)], stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        try:
            yield sock
        finally:
            proc.terminate()
            proc.wait(30)


def timed(client: RawQMP, data: bytes) -> float:
    start = time.perf_counter_ns()
    reply = client.request(data)
    elapsed = time.perf_counter_ns() - start
    if not reply.startswith(b'{"return"'):
        raise RuntimeError(f"error reply: {reply[:200]!r}")
    return elapsed / 1000.0  # microseconds


def summary(samples: list[float]) -> tuple[float, float, float]:
    deciles = statistics.quantiles(samples, n=10)
    return statistics.median(samples), deciles[0], deciles[-1]


def vcpu_counters(client: RawQMP, names: list[str]) -> dict[str, dict[str, int]]:
    arguments = {"target": "vcpu", "providers": [{"provider": "kvm", "names": names}]}
    reply = json.loads(
        client.request(json.dumps({"execute": "query-stats", "arguments": arguments}).encode())
    )
    return {r["qom-path"]: {s["name"]: s["value"] for s in r["stats"]} for r in reply["return"]}


def observer_effect(client: RawQMP, queries: int, quiet: float) -> dict[str, float]:
    """Exits and signal exits added per vCPU per unfiltered vcpu query.

    The guest's own activity is measured over a quiet period first and subtracted; the
    reads that bracket each period are part of the counted queries (QEMU's kick them too).
    """
    names = ["exits", "signal_exits"]
    a = vcpu_counters(client, names)
    time.sleep(quiet)
    b = vcpu_counters(client, names)
    start = time.perf_counter()
    for _ in range(queries):
        client.request(request("vcpu, unfiltered"))
    busy = time.perf_counter() - start
    c = vcpu_counters(client, names)
    out = {}
    for name in names:
        idle_rate = statistics.mean((b[p][name] - a[p][name]) for p in a) / quiet
        added = statistics.mean((c[p][name] - b[p][name]) for p in a)
        out[name] = max(0.0, (added - idle_rate * busy)) / (queries + 1)
    return out


def run(args: argparse.Namespace) -> None:
    reasons = {"QEMU 7.2": qemu_unavailable_reason(), "QEMU 10.0": qemu10_unavailable_reason()}
    peers = [name for name, reason in reasons.items() if reason is None]
    rows: list[str] = []
    effects: list[str] = []
    per_vcpu: dict[int, float] = {}
    cases = [*CASES, SCHEMAS]
    with floor_server() as floor_sock:
        floor = RawQMP(floor_sock)
        for n in args.sizes + args.ours_only:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(vmstats_server(n, args.rate))
                clients: dict[str, RawQMP] = {"vmstats": RawQMP(sock)}
                clients["vmstats"].negotiate()
                if n in args.sizes:
                    if "QEMU 7.2" in peers:
                        clients["QEMU 7.2"] = stack.enter_context(
                            QemuVM(n, memory_mb=128)
                        ).connect()
                    if "QEMU 10.0" in peers:
                        clients["QEMU 10.0"] = stack.enter_context(
                            qemu10_vm(n, memory_mb=128)
                        ).connect()
                    if len(clients) > 1:
                        time.sleep(args.settle)  # let the guests' firmware reach its idle loop
                clients["floor"] = floor
                for case in cases:
                    rows.append(_cell(n, case, clients, peers, args, per_vcpu))
                if n in args.observer:
                    for name, client in clients.items():
                        if name != "floor":
                            e = observer_effect(client, args.observer_queries, args.quiet)
                            effects.append(f"| {n} | {name} | {e['signal_exits']:.2f} | "
                                           f"{e['exits']:.2f} |")  # fmt: skip
                for name, client in clients.items():
                    if name != "floor":
                        client.close()
        floor.close()
    print(f"query-stats round trip over a unix socket, microseconds: median (p10-p90), "
          f"{args.calls} interleaved calls per cell after {args.warmup} warm-up calls; "
          "the floor is a trivial asyncio server answering one line\n")  # fmt: skip
    head = ["vCPUs", "request", "vmstats", *peers, "floor", *(f"/ {p}" for p in peers), "/ floor"]
    print("| " + " | ".join(head) + " |")
    print("|---:|---|" + "---:|" * (len(head) - 2))
    print("\n".join(rows))
    print("\nObserver effect: added to each vCPU per unfiltered vcpu query")
    print("(the guest's own rate, measured over a quiet period, is subtracted)\n")
    print("| vCPUs | server | signal_exits | exits |")
    print("|---:|---|---:|---:|")
    print("\n".join(effects))
    print("\nvmstats cost per vCPU, unfiltered vcpu query (median / N), microseconds\n")
    print("| vCPUs | " + " | ".join(str(n) for n in per_vcpu) + " |")
    print("|---" * (len(per_vcpu) + 1) + "|")
    print("| us/vCPU | " + " | ".join(f"{v:.1f}" for v in per_vcpu.values()) + " |")
    for name, reason in reasons.items():
        if reason:
            print(f"\n{name} columns are missing: {reason}")


def _cell(n: int, case: str, clients: dict[str, RawQMP], peers: list[str],
          args: argparse.Namespace, per_vcpu: dict[int, float]) -> str:  # fmt: skip
    """One row: every system timed on the same request, calls rotating between them."""
    data = request(case)
    names = list(clients)
    for _ in range(args.warmup):
        for name in names:
            timed(clients[name], data)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.calls):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(timed(clients[name], data))
    medians = {name: summary(values) for name, values in samples.items()}
    ours = medians["vmstats"]
    if case == "vcpu, unfiltered":
        per_vcpu[n] = ours[0] / n

    def cell(name: str) -> str:
        if name not in medians:
            return "-"
        m = medians[name]
        return f"{m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f})"

    ratios = [f"{ours[0] / medians[p][0]:.3f}" if p in medians else "-" for p in peers]
    cells = [str(n), case, cell("vmstats"), *(cell(p) for p in peers), cell("floor"),
             *ratios, f"{ours[0] / medians['floor'][0]:.2f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--ours-only", type=lambda s: [int(x) for x in s.split(",") if x], default=[256])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--rate",
        type=float,
        default=0.2,
        help="demo guest rounds/s per vCPU (low: a quiet guest keeps the observer reading clean)",
    )
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument(
        "--observer", type=lambda s: [int(x) for x in s.split(",") if x], default=[4, 64]
    )
    p.add_argument("--observer-queries", type=int, default=100)
    p.add_argument("--quiet", type=float, default=2.0)
    run(p.parse_args())


if __name__ == "__main__":
    main()
