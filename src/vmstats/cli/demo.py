"""``vmstats demo``: boot the demo VM, keep its stats fds, show or serve its stats."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from vmstats.demo.guest import GuestProgram
from vmstats.demo.process import DemoProcess
from vmstats.kvm.ioctl import KvmUnavailable
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import QMPServer
from vmstats.stats.registry import StatsRegistry
from vmstats.top.sample import take_sample
from vmstats.top.view import vcpu_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="boot the demo KVM guest and show its live stats")
    p.add_argument("--vcpus", type=int, default=2, metavar="N", help="vCPUs (default 2)")
    p.add_argument(
        "--headless",
        action="store_true",
        help="print one line when ready, then run until SIGTERM or SIGINT",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=50.0,
        metavar="R",
        help="guest rounds per second per vCPU; 0 runs flat out (default 50)",
    )
    p.add_argument(
        "--outs", type=int, default=8, metavar="K", help="port writes per round (default 8)"
    )
    p.add_argument(
        "--mmio", type=int, default=2, metavar="M", help="MMIO writes per round (default 2)"
    )
    p.add_argument(
        "--qmp",
        metavar="PATH",
        help="also serve the VM's stats over QMP on this unix socket (mode 0600)",
    )
    p.add_argument(
        "--qmp-tcp",
        metavar="[HOST:]PORT",
        help="also serve QMP on TCP; HOST defaults to 127.0.0.1 (loopback only)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="refresh of the live view in seconds (default 1)",
    )
    p.set_defaults(func=run)


async def _main(args: argparse.Namespace, demo: DemoProcess, registry: StatsRegistry) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = None
    where = ""
    if args.qmp or args.qmp_tcp:
        assert demo.provider is not None
        paths = [v.qom_path for v in demo.provider.vcpus]
        server = QMPServer(Monitor(registry, lambda: paths))
        try:
            if args.qmp:
                await server.start_unix(args.qmp)
                where += f", QMP {args.qmp}"
            if args.qmp_tcp:
                host, _, port = args.qmp_tcp.rpartition(":")
                bound = await server.start_tcp(host or "127.0.0.1", int(port))
                where += f", QMP tcp:{host or '127.0.0.1'}:{bound}"
        except (OSError, ValueError) as exc:
            print(f"vmstats demo: cannot serve QMP: {exc}", file=sys.stderr)
            await server.close()
            return 1
    try:
        return await _show(args, demo, registry, stop, where)
    finally:
        if server is not None:
            await server.close()


async def _show(
    args: argparse.Namespace,
    demo: DemoProcess,
    registry: StatsRegistry,
    stop: asyncio.Event,
    where: str,
) -> int:
    if args.headless:
        print(f"vmstats demo: ready: {args.vcpus} vCPUs, VM process {demo.pid}{where}", flush=True)
        while not stop.is_set() and demo.alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    else:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        before = take_sample(registry)
        title = f"vmstats demo: {args.vcpus} vCPUs, VM process {demo.pid}{where} (Ctrl-C to quit)"
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set() and demo.alive():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=args.interval)
                after = take_sample(registry)
                live.update(vcpu_table(before, after, title), refresh=True)
                before = after
    if not demo.alive():
        print("vmstats demo: the VM process stopped unexpectedly", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        program = GuestProgram(args.outs, args.mmio)
    except ValueError as exc:
        print(f"vmstats demo: {exc}", file=sys.stderr)
        return 2
    demo = DemoProcess(args.vcpus, program, args.rate)
    try:
        provider = demo.start()
    except KvmUnavailable as exc:
        print(
            f"vmstats demo: cannot start the demo VM: {exc}\n"
            "The demo needs a usable /dev/kvm: run it on a Linux host (or a VM with nested "
            "virtualisation) with the kvm module loaded, as root or as a member of the "
            "'kvm' group.",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        demo.stop()
        print(f"vmstats demo: cannot start the demo VM: {exc}", file=sys.stderr)
        return 1
    registry = StatsRegistry()
    registry.add_stats_callbacks(provider)
    try:
        status = asyncio.run(_main(args, demo, registry))
    finally:
        code = demo.stop()
    if code not in (0, None) and status == 0:
        status = 1
    return status
