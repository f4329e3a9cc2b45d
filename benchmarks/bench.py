"""query-stats latency and observer effect: vmstats (demo VM) vs QEMU 7.2 with KVM.

Run: ``./bench.sh`` (or ``.venv/bin/python benchmarks/bench.py --help``).  Prints markdown.

Method (also in docs/benchmarks.md): for each vCPU count N, our server (``vmstats demo
--headless --qmp``, its own process; the guest runs in a child process) and a QEMU 7.2
(``-accel kvm -smp N``, no disk, guest running) are started side by side.  One raw QMP
client per system sends the same request bytes; calls alternate between the systems (and
which goes first) so machine drift hits both alike.  After a warm-up, each case is timed
``--calls`` times from send to the last byte of the reply; we report median, p10, p90 and
the ratio of medians.  The observer effect is read from the vCPU stats themselves.
"""

from __future__ import annotations

import argparse
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
    qemu_reason = qemu_unavailable_reason()
    rows: list[str] = []
    effects: list[str] = []
    per_vcpu: dict[int, float] = {}
    cases = [*CASES, SCHEMAS]
    for n in args.sizes + args.ours_only:
        with_qemu = n in args.sizes and qemu_reason is None
        with (
            vmstats_server(n, args.rate) as sock,
            QemuVM(n, memory_mb=128) if with_qemu else _nothing() as qemu,
        ):
            ours = RawQMP(sock)
            ours.negotiate()
            theirs = None
            if qemu is not None:
                theirs = qemu.connect()
                time.sleep(args.settle)  # let the guest firmware reach its idle loop
            for case in cases:
                data = request(case)
                for _ in range(args.warmup):
                    timed(ours, data)
                    if theirs:
                        timed(theirs, data)
                mine: list[float] = []
                qemus: list[float] = []
                for i in range(args.calls):
                    order = (
                        [(ours, mine), (theirs, qemus)]
                        if i % 2
                        else [(theirs, qemus), (ours, mine)]
                    )
                    for client, samples in order:
                        if client is not None:
                            samples.append(timed(client, data))
                m = summary(mine)
                if case == "vcpu, unfiltered":
                    per_vcpu[n] = m[0] / n
                if qemus:
                    q = summary(qemus)
                    rows.append(
                        f"| {n} | {case} | {m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f}) | "
                        f"{q[0]:,.0f} ({q[1]:,.0f}-{q[2]:,.0f}) | {m[0] / q[0]:.3f} |"
                    )
                else:
                    rows.append(f"| {n} | {case} | {m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f}) | - | - |")
            if n in args.observer:
                for name, client in (("vmstats", ours), ("QEMU 7.2", theirs)):
                    if client is not None:
                        e = observer_effect(client, args.observer_queries, args.quiet)
                        effects.append(
                            f"| {n} | {name} | {e['signal_exits']:.2f} | {e['exits']:.2f} |"
                        )
            ours.close()
            if theirs:
                theirs.close()
    print(
        f"query-stats round trip over a unix socket, microseconds: median (p10-p90), "
        f"{args.calls} interleaved calls per cell after {args.warmup} warm-up calls\n"
    )
    print("| vCPUs | request | vmstats | QEMU 7.2 | vmstats / QEMU |")
    print("|---:|---|---:|---:|---:|")
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
    if qemu_reason:
        print(f"\nQEMU columns are empty: {qemu_reason}")


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
