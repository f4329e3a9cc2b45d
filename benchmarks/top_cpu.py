"""CPU used by ``vmstats top`` itself, watching 8 demo VMs of 16 vCPUs at a 1 s interval.

Target (issue #9): under 3 % of one core.  Both the full-screen view (in a tmux terminal
of 80x24) and a batch mode (``--json``) are measured over the same window, from
``/proc/PID/stat`` (user + system time of top's process), after a warm-up.

    .venv/bin/python benchmarks/top_cpu.py [--vms 8] [--vcpus 16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmstats.testing.hostile import DemoServer, cpu_seconds


def tui_pid(session: str) -> int:
    """The pid of the vmstats process running in a tmux session's pane."""
    pane = subprocess.run(["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                          capture_output=True, text=True, check=True).stdout.split()[0]  # fmt: skip
    children = subprocess.run(["pgrep", "-P", pane], capture_output=True, text=True).stdout.split()
    return int(children[0]) if children else int(pane)


def measure(pid: int, seconds: float) -> float:
    """CPU share of one core used by ``pid`` over ``seconds``."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--vcpus", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="vmstats-topcpu-"))
    servers = []
    with contextlib.ExitStack() as stack:
        for index in range(args.vms):
            server = DemoServer(vcpus=args.vcpus, rate=1.0)
            server.args[server.args.index("--qmp") + 1] = str(run_dir / f"vm{index}.qmp")
            server.path = run_dir / f"vm{index}.qmp"
            servers.append(stack.enter_context(server))
        top = [sys.executable, "-m", "vmstats", "top", str(run_dir), "-s", "1"]
        batch = subprocess.Popen([*top, "--json"], stdout=subprocess.DEVNULL)
        stack.callback(batch.terminate)
        results = {}
        if shutil.which("tmux"):
            session = f"topcpu{os.getpid()}"
            subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                            " ".join(top)], check=True)  # fmt: skip
            stack.callback(subprocess.run, ["tmux", "kill-session", "-t", session])
            time.sleep(5)  # warm-up: connections made, schemas read
            results["full-screen view (tmux 80x24)"] = measure(tui_pid(session), args.seconds)
        else:
            time.sleep(5)
        results["batch --json"] = measure(batch.pid, args.seconds)
    print(f"| {args.vms} VMs x {args.vcpus} vCPUs, 1 s interval | CPU of one core |")
    print("|---|---|")
    for name, share in results.items():
        print(f"| {name} | {share * 100:.1f} % |")


if __name__ == "__main__":
    main()
