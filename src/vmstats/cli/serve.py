"""``vmstats serve`` (the host daemon) and ``vmstats list`` (what it serves)."""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import signal
import sys
from pathlib import Path

from vmstats.cli.options import add_server_limits, positive_float, server_limits
from vmstats.serve.daemon import Daemon, vmms
from vmstats.serve.discover import vm_name

DEFAULT_RUN_DIR = Path("/run/vmstats")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="serve every VM of this host read-only (as root)")
    serve.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"where the sockets go (default {DEFAULT_RUN_DIR})",
    )
    serve.add_argument(
        "--group",
        metavar="GROUP",
        help="group of the sockets (mode 0660); default: the daemon's own",
    )
    serve.add_argument(
        "--scan-interval",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="seconds between looks for new VMs (default 5)",
    )
    serve.add_argument("--once", action="store_true",
                       help="print what would be served, and exit")  # fmt: skip
    add_server_limits(serve)
    serve.set_defaults(func=run_serve)
    listing = sub.add_parser("list", help="the VMs a vmstats serve daemon serves")
    listing.add_argument(
        "run_dir", nargs="?", type=Path, default=DEFAULT_RUN_DIR, metavar="RUN_DIR"
    )
    listing.set_defaults(func=run_list)


def _table(rows: list[dict[str, object]]) -> str:
    header = ["name", "pid", "vcpus", "source", "socket"]
    cells = [[str(r.get(h, "")) for h in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run_serve(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("vmstats serve: finding VMs by their stats fds needs root (CAP_SYS_PTRACE); "
              "run it as root (QMP sources are not supported yet)", file=sys.stderr)  # fmt: skip
        return 1
    group = None
    if args.group is not None:
        try:
            group = int(args.group) if args.group.isdigit() else grp.getgrnam(args.group).gr_gid
        except KeyError:
            print(f"vmstats serve: no group named {args.group!r}", file=sys.stderr)
            return 2
    if args.once:
        found = vmms()
        rows: list[dict[str, object]] = []
        for pid, attached in found:
            name = vm_name(pid, (str(r["name"]) for r in rows))
            source = "fds (vm, vcpu)" if attached.vm is not None else "fds (vcpu)"
            socket = str(args.run_dir / f"{name}.qmp")
            rows.append({"name": name, "pid": pid, "vcpus": len(attached.vcpus),
                         "source": source, "socket": socket})  # fmt: skip
            attached.close()
        sys.stdout.write(_table(rows) if rows else "no VM found\n")
        return 0
    return asyncio.run(_serve(args, group))


async def _serve(args: argparse.Namespace, group: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(args.run_dir, group=group, scan_interval=args.scan_interval,
                    limits=server_limits(args))  # fmt: skip
    try:
        await daemon.run(stop)
    except OSError as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        return 1
    return 0


def run_list(args: argparse.Namespace) -> int:
    state = args.run_dir / "vms.json"
    try:
        rows = json.loads(state.read_text())
    except FileNotFoundError:
        print(f"vmstats list: no vmstats serve runs with {args.run_dir} ({state} is missing)",
              file=sys.stderr)  # fmt: skip
        return 1
    except (OSError, ValueError) as exc:
        print(f"vmstats list: cannot read {state}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(_table(rows) if rows else "no VM served\n")
    return 0
