"""``vmstats demo``: boot the demo VM, keep its stats fds, show or serve its stats.

The VM runs in a child process (see :mod:`vmstats.demo.process`) watched through its
pidfd: if it dies, the provider answers an error from that moment, the QMP server closes
its clients, and the demo exits with one line saying so.  Ctrl-C and SIGTERM stop it
quietly with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from vmstats.cli.options import (
    add_server_limits,
    add_tracepoints_option,
    bounded_int,
    non_negative_float,
    positive_float,
    server_limits,
    socket_path,
    tcp_address,
)
from vmstats.demo.guest import GuestProgram
from vmstats.demo.process import DemoProcess
from vmstats.errors import GuestError, KvmUnavailable, SocketInUse
from vmstats.kvm.attach import creator_thread
from vmstats.kvm.provider import KvmStatsProvider
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.server import QMPServer, claim_socket_path
from vmstats.stats.registry import StatsRegistry
from vmstats.trace.events import DEFAULT_EVENTS
from vmstats.trace.provider import TracepointsProvider, VcpuThread, open_tracing


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="boot the demo KVM guest and show its live stats")
    p.add_argument("--vcpus", type=bounded_int(1, 1024), default=2, metavar="N",
                   help="vCPUs (default 2)")  # fmt: skip
    p.add_argument(
        "--headless",
        action="store_true",
        help="print one line when ready, then run until SIGTERM or SIGINT",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=50.0,
        metavar="R",
        help="guest rounds per second per vCPU; 0 runs flat out (default 50)",
    )
    p.add_argument("--outs", type=bounded_int(0, 0xFFFF), default=8, metavar="K",
                   help="port writes per round (default 8)")  # fmt: skip
    p.add_argument("--mmio", type=bounded_int(0, 0xFFFF), default=2, metavar="M",
                   help="MMIO writes per round (default 2)")  # fmt: skip
    p.add_argument(
        "--qmp",
        type=socket_path,
        metavar="PATH",
        help="also serve the VM's stats over QMP on this unix socket (mode 0600)",
    )
    p.add_argument(
        "--qmp-tcp",
        type=tcp_address,
        metavar="[HOST:]PORT",
        help="also serve QMP on TCP; HOST defaults to 127.0.0.1 (loopback only)",
    )
    p.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="refresh of the live view in seconds (default 1)",
    )
    add_tracepoints_option(p, DEFAULT_EVENTS)
    add_server_limits(p)
    p.set_defaults(func=run)


async def _main(args: argparse.Namespace, demo: DemoProcess, provider: KvmStatsProvider) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    vm_gone = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    assert provider.vmm is not None
    loop.add_reader(provider.vmm.pidfd, vm_gone.set)
    registry = StatsRegistry()
    registry.add_stats_callbacks(provider)
    exits = _exit_reasons(args, demo, provider)
    if exits is not None:
        registry.add_stats_callbacks(exits)
    server = None
    where = ""
    if args.qmp or args.qmp_tcp:
        machine = Machine.pc((i, v.qom_path, creator_thread(v.file))
                             for i, v in enumerate(provider.vcpus))  # fmt: skip
        server = QMPServer(Monitor(registry, machine), server_limits(args))
        try:
            if args.qmp:
                await server.start_unix(args.qmp)
                where += f", QMP {args.qmp}"
            if args.qmp_tcp:
                host, port = args.qmp_tcp
                bound = await server.start_tcp(host, port)
                where += f", QMP tcp:{host}:{bound}"
        except (OSError, SocketInUse) as exc:
            print(f"vmstats demo: cannot serve QMP: {exc}", file=sys.stderr)
            await server.close()
            return 1
    try:
        await _show(args, demo, registry, stop, vm_gone, where)
    finally:
        loop.remove_reader(provider.vmm.pidfd)
        if server is not None:
            await server.close()
        if exits is not None:
            exits.close()
            exits.tracing.close()
    if vm_gone.is_set():
        print(f"vmstats demo: the VM process {demo.pid} exited ({demo.exit_reason()}); "
              "stopping", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _exit_reasons(args: argparse.Namespace, demo: DemoProcess,
                  provider: KvmStatsProvider) -> TracepointsProvider | None:  # fmt: skip
    """The demo's exit reasons, counted on its vCPU threads where this process may (as
    root); None (and the reason logged once) where not."""
    tracing = open_tracing(args.tracepoints) if args.tracepoints else None
    if tracing is None:
        return None
    threads = [VcpuThread(v.qom_path, tid) for v, tid in zip(provider.vcpus, demo.threads,
                                                              strict=False)]  # fmt: skip
    return TracepointsProvider(tracing, threads, pid=demo.pid)


async def _wait(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _show(
    args: argparse.Namespace,
    demo: DemoProcess,
    registry: StatsRegistry,
    stop: asyncio.Event,
    vm_gone: asyncio.Event,
    where: str,
) -> None:
    events = (stop, vm_gone)
    if args.headless:
        print(f"vmstats demo: ready: {args.vcpus} vCPUs, VM process {demo.pid}{where}", flush=True)
        await _wait(events, timeout=1e9)
        return
    from vmstats.reader.reading import RegistryReader
    from vmstats.top.app import TopApp
    from vmstats.top.drive import LiveDriver
    from vmstats.top.watch import Watch

    assert demo.provider is not None
    cpus = [v.qom_path for v in demo.provider.vcpus]
    watch = Watch([RegistryReader(f"demo-{demo.pid}", registry, cpus)])
    title = f"vmstats demo: {args.vcpus} vCPUs, VM process {demo.pid}{where} (q or Ctrl-C quits)"
    app = TopApp(LiveDriver(watch, args.interval), title)
    viewer = asyncio.ensure_future(app.run_async())
    waiter = asyncio.ensure_future(_wait(events, timeout=1e9))
    await asyncio.wait([viewer, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not viewer.done():  # SIGTERM or the VM died: close the view first
        app.exit()
        await viewer
    waiter.cancel()


def run(args: argparse.Namespace) -> int:
    if args.qmp is not None:
        try:  # before the VM boots: a live server at the path is refused, not hijacked
            claim_socket_path(Path(args.qmp))
        except SocketInUse as exc:
            print(f"vmstats demo: cannot serve QMP: {exc}", file=sys.stderr)
            return 1
    demo = DemoProcess(args.vcpus, GuestProgram(args.outs, args.mmio), args.rate)
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
    except (OSError, GuestError) as exc:
        demo.stop()
        print(f"vmstats demo: cannot start the demo VM: {exc}", file=sys.stderr)
        return 1
    try:
        status = asyncio.run(_main(args, demo, provider))
    finally:
        code = demo.stop()
    if code not in (0, None) and status == 0:
        status = 1
    return status
