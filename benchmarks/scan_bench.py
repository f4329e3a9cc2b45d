"""What a scan for VMMs costs on a crowded host, and what a user flooding fd tables can
make it cost: the daemon's scan (:class:`vmstats.kvm.scan.ProcessScanner`, which lists a
process again only when its fds changed, within a budget) against listing every fd of
every process at every scan (what the daemon did before), interleaved, medians.

    python benchmarks/scan_bench.py [--idle 2000] [--flooders 8] [--rounds 15]

Rows: this host as it is; with ``--idle`` sleeping processes; with ``--flooders`` more
processes each holding all the fds its limit allows and changing them continually (so
that each is "changed" at every scan).  Run as root (the daemon's view of every process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from vmstats.kvm.attach import stats_fds_by_process
from vmstats.kvm.scan import ProcessScanner
from vmstats.testing.hostile import FLOODER


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def host_fds() -> tuple[int, int]:
    processes = fds = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fds += os.stat(f"/proc/{entry}/fd").st_size
                processes += 1
            except OSError:
                continue
    return processes, fds


def row(label: str, rounds: int) -> str:
    scanner = ProcessScanner()
    first = timed(scanner.scan)
    steady, full = [], []
    for _ in range(rounds):  # interleaved: the host's noise falls on both alike
        steady.append(timed(scanner.scan))
        full.append(timed(lambda: stats_fds_by_process(vmms_only=True)))
    processes, fds = host_fds()
    s, f = statistics.median(steady), statistics.median(full)
    return (f"| {label} | {processes:,} | {fds:,} | {first:.1f} | {s:.1f} | {f:.1f} | "
            f"{s / f:.2f}x |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--flooders", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print("| host | processes | fds | first scan, ms | steady scan, ms | every fd at "
          "every scan, ms | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print(row("as it is", args.rounds), flush=True)
    idle = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.idle)]
    flooders: list[subprocess.Popen[bytes]] = []
    try:
        print(row(f"+ {args.idle:,} idle processes", args.rounds), flush=True)
        for _ in range(args.flooders):
            flooders.append(subprocess.Popen([sys.executable, "-c", FLOODER],
                                             stdout=subprocess.PIPE))  # fmt: skip
            assert flooders[-1].stdout is not None
            flooders[-1].stdout.readline()
        print(row(f"+ {args.flooders} processes flooding and changing their fd tables",
                  args.rounds), flush=True)  # fmt: skip
    finally:
        for proc in [*idle, *flooders]:
            proc.kill()
        for proc in [*idle, *flooders]:
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
