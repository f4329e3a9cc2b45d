"""What counting exit reasons costs the guest (issue 21, target under 2 %): the demo's
loop run flat out on one vCPU, with and without the kvm_userspace_exit counters of
every reason open on its thread, interleaved, medians.

    sudo .venv/bin/python benchmarks/trace_cost.py [--rounds 2000] [--pairs 15]

Each measurement is the time of ``--rounds`` rounds (8 ``out``, 2 MMIO writes and a
``hlt`` each: 11 exits to userspace a round) on this thread; the counters, when open,
count every one of them in the kernel.  Needs tracefs mounted and root (or CAP_PERFMON).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from vmstats.demo.vm import DemoVM
from vmstats.trace.counters import CounterError, ReasonCounters, totals
from vmstats.trace.format import TraceFormatError, read_format


def timed(vm: DemoVM, rounds: int) -> float:
    started = time.perf_counter()
    vm.run_rounds(rounds)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    try:
        event = read_format("kvm", "kvm_userspace_exit")
    except TraceFormatError as exc:
        print(f"trace_cost: {exc}", file=sys.stderr)
        return 1
    table = event.table("reason")
    assert table is not None
    plain, counted = [], []
    exits = 0
    with DemoVM(1, rate=0) as vm:
        vm.run_rounds(args.rounds)  # warm
        for _ in range(args.pairs):
            plain.append(timed(vm, args.rounds))
            counters = ReasonCounters(event, table)
            try:
                counters.open([threading.get_native_id()])
            except CounterError as exc:
                print(f"trace_cost: {exc}", file=sys.stderr)
                return 1
            try:
                counted.append(timed(vm, args.rounds))
                exits = sum(totals(counters.counts()).values())
            finally:
                counters.close()
    a, b = statistics.median(plain), statistics.median(counted)
    per_exit = (b - a) / max(exits, 1) * 1e9
    print(f"| {args.rounds} rounds ({exits:,} exits counted), {len(table.names)} counters "
          f"| without {a * 1000:.1f} ms | with {b * 1000:.1f} ms | {(b / a - 1) * 100:+.1f} % "
          f"| {per_exit:+.0f} ns an exit |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
