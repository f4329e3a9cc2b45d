"""What counting exit reasons costs the guest (issue 21, target under 2 %): the demo's
loop run flat out on one vCPU, with and without counting, interleaved; the median of the
per-pair ratios.

    sudo .venv/bin/python benchmarks/trace_cost.py [--rounds 100] [--pairs 600] [--events E]

Each measurement is the CPU time of ``--rounds`` rounds (8 ``out``, 2 MMIO writes and a
``hlt`` each: 11 exits to userspace a round) on this thread, pinned to one CPU.  A pair
is: without, with, without; its ratio is the middle one over the mean of the other two,
so a slow spell of this noisy machine spans all three.  The noise only adds time, so
the ratio of the two sides' 10th percentiles is given too: what counting costs when
nothing else interferes.  Two ways of counting:

- ``vmstats``: what the provider does (``vmstats.trace``): the process's programs
  attached, this thread's array entered (and all of it closed after the pair's middle);
- ``kvm_stat``: kvm_stat's way, a perf counter per reason on this thread, each filtered
  ``reason == N`` in the kernel.

Needs root (or CAP_BPF and CAP_PERFMON); tracefs is mounted privately if it is not.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

from vmstats.cli.options import tracepoint_events
from vmstats.demo.vm import DemoVM
from vmstats.errors import VmstatsError
from vmstats.trace.counters import ReasonCounters
from vmstats.trace.events import DEFAULT_EVENTS
from vmstats.trace.format import read_format
from vmstats.trace.provider import TracepointsProvider, VcpuThread, open_tracing


def timed(vm: DemoVM, rounds: int) -> float:
    """The CPU time of ``rounds`` rounds on this thread (time in the guest and in KVM
    included): the time this machine's other tenants take from it is not."""
    started = time.thread_time()
    vm.run_rounds(rounds)
    return time.thread_time() - started


def ours(events: Sequence[str]) -> Callable[[], None]:
    tracing = open_tracing(events)
    if tracing is None:
        raise VmstatsError("exit reasons cannot be counted here (see the log line above)")
    provider = TracepointsProvider(tracing, [VcpuThread("/cpu", threading.get_native_id())])

    def close() -> None:
        provider.close()
        tracing.close()

    return close


def kvm_stats_way() -> Callable[[], None]:
    event = read_format("kvm", "kvm_userspace_exit")
    table = event.table("reason")
    assert table is not None
    counters = ReasonCounters(event, table)
    counters.open([threading.get_native_id()])
    return counters.close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument(
        "--events",
        type=tracepoint_events,
        default=DEFAULT_EVENTS,
        help="what vmstats counts, as --tracepoints (default: its default)",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    ways: dict[str, Callable[[], Callable[[], None]]] = {
        "vmstats": functools.partial(ours, args.events),
        "kvm_stat": kvm_stats_way,
    }
    ratios: dict[str, list[float]] = {name: [] for name in ways}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ways}
    try:
        with DemoVM(1, rate=0) as vm:
            vm.run_rounds(2000)  # warm
            for _ in range(args.pairs):
                for name, start in ways.items():
                    before = timed(vm, args.rounds)
                    stop = start()
                    try:
                        during = timed(vm, args.rounds)
                    finally:
                        stop()
                    after = timed(vm, args.rounds)
                    ratios[name].append(during / ((before + after) / 2))
                    times[name][0].extend((before, after))
                    times[name][1].append(during)
            per_exit = statistics.median([timed(vm, args.rounds) for _ in range(20)])
    except VmstatsError as exc:
        print(f"trace_cost: {exc}", file=sys.stderr)
        return 1
    exits = args.rounds * 11
    print(f"{args.pairs} pairs of {args.rounds} rounds ({exits:,} exits, "
          f"{per_exit / exits * 1e6:.1f} us an exit without counting)")  # fmt: skip
    print("| counting | slow-down: median of pairs (quartiles) | 10th percentiles' ratio |")
    print("|---|---|---|")
    for name, found in ratios.items():
        q1, median, q3 = statistics.quantiles(found, n=4)
        without, during = (statistics.quantiles(t, n=10)[0] for t in times[name])
        print(f"| {name} | {(median - 1) * 100:+.1f} % ({(q1 - 1) * 100:+.1f} % .. "
              f"{(q3 - 1) * 100:+.1f} %) | {(during / without - 1) * 100:+.1f} % |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
