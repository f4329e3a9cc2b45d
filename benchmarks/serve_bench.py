"""``vmstats serve``: a QEMU 10.0's vCPU stats through our socket against its own monitor,
and how long a discovery scan of a host with many VMs takes.

    sudo .venv/bin/python benchmarks/serve_bench.py [--vcpus 64] [--vms 50] [--calls 100]

Targets (issue #10): the unfiltered vcpu query of a 64-vCPU QEMU 10.0 through our socket
at most 0.2x QEMU's own, with 0 exits added; a scan of 50 VMs under 50 ms.  Method as
bench.py: the same raw client, calls alternating, time to the last byte, medians.
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
from pathlib import Path

from vmstats.serve.discover import vmms
from vmstats.testing.hostile import DemoServer
from vmstats.testing.qemu import RawQMP, stop_process
from vmstats.testing.qemu10 import qemu10_vm

QUERY = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
KICKS = (b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":'
         b'[{"provider":"kvm","names":["signal_exits"]}]}}')  # fmt: skip


def timed(client: RawQMP) -> float:
    started = time.perf_counter()
    reply = client.request(QUERY)
    elapsed = time.perf_counter() - started
    assert reply.startswith(b'{"return"'), reply[:200]
    return elapsed * 1e6


def kicks(client: RawQMP) -> int:
    reply = json.loads(client.request(KICKS))["return"]
    return sum(r["stats"][0]["value"] for r in reply)


def through_our_socket(vcpus: int, calls: int) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="vmstats-serve-bench-"))
    daemon = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                               str(run_dir), "--scan-interval", "0.5"])  # fmt: skip
    try:
        with qemu10_vm(vcpus, memory_mb=256, extra_args=["-name", "bench"]) as vm:
            socket = run_dir / "bench.qmp"
            deadline = time.monotonic() + 60
            while not socket.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(4)  # SeaBIOS settles
            ours, theirs = RawQMP(socket), vm.connect()
            ours.negotiate()
            for _ in range(10):
                timed(ours), timed(theirs)
            mine: list[float] = []
            qemus: list[float] = []
            for i in range(calls):
                pair = [(ours, mine), (theirs, qemus)]
                for client, samples in pair if i % 2 else pair[::-1]:
                    samples.append(timed(client))
            ours_only_before = kicks(ours)
            for _ in range(calls):
                timed(ours)
            added = (kicks(ours) - ours_only_before) / vcpus / calls
            m, q = statistics.median(mine), statistics.median(qemus)
            print(f"| {vcpus} vCPUs, unfiltered vcpu query | {m:,.0f} | {q:,.0f} | {m / q:.3f} |"
                  f" {added:.2f} |")  # fmt: skip
            ours.close()
            theirs.close()
    finally:
        stop_process(daemon)


def scan(vms: int) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(vms):
            stack.enter_context(DemoServer(vcpus=1, rate=0.001))
        times = []
        for _ in range(5):
            started = time.perf_counter()
            found = list(vmms())
            times.append((time.perf_counter() - started) * 1e3)
            for _, attached in found:
                attached.close()
        print(f"| discovery scan, {vms} demo VMs (and {vms} processes holding copies) | "
              f"{statistics.median(times):.1f} ms | found {len(found)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vcpus", type=int, default=64)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    print("| case | vmstats serve (us) | QEMU 10.0 monitor (us) | ratio "
          "| signal exits added per vCPU per query |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    through_our_socket(args.vcpus, args.calls)
    print()
    print("| scan | median of 5 | |")
    print("|---|---:|---|")
    scan(args.vms)


if __name__ == "__main__":
    main()
