"""``vmstats serve`` (the host daemon) and ``vmstats list`` (what it serves)."""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path

from vmstats.cli.options import add_server_limits, positive_float, server_limits
from vmstats.serve.daemon import Daemon, describe, vmms
from vmstats.serve.discover import vm_name

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/vmstats")
DEFAULTS: dict[str, object] = {}


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
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings (run-dir, group, scan-interval, and the limits "
        "below by their option names); reread on SIGHUP",
    )
    serve.add_argument("--once", action="store_true",
                       help="print what would be served, and exit")  # fmt: skip
    add_server_limits(serve)
    serve.set_defaults(func=run_serve)
    DEFAULTS.update({action.dest: action.default for action in serve._actions})
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


#: Settings a config file may give, by option name, and which the command line overrides.
SETTINGS = ("run-dir", "group", "scan-interval", "max-connections", "idle-timeout",
            "message-timeout", "write-timeout")  # fmt: skip


def apply_config(args: argparse.Namespace, parser_defaults: dict[str, object]) -> str | None:
    """Settings from ``args.config`` where the command line left the default; an error
    in words, or None."""
    if args.config is None:
        return None
    try:
        with args.config.open("rb") as file:
            config = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"cannot read {args.config}: {exc}"
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        return (
            f"{args.config}: unknown settings {', '.join(unknown)} (known: {', '.join(SETTINGS)})"
        )
    for key, value in config.items():
        attr = key.replace("-", "_")
        if getattr(args, attr) == parser_defaults.get(attr):
            setattr(args, attr, Path(value) if key == "run-dir" else value)
    return None


def run_serve(args: argparse.Namespace) -> int:
    problem = apply_config(args, DEFAULTS)
    if problem:
        print(f"vmstats serve: {problem}", file=sys.stderr)
        return 2
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
            rows.append(describe(name, pid, len(attached.vcpus), attached.vm is not None,
                                 args.run_dir / f"{name}.qmp"))  # fmt: skip
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

    def reload() -> None:
        """SIGHUP: reread the config; the interval and the limits of new sockets follow."""
        if args.config is None:
            log.info("SIGHUP: no --config to reread")
            return
        fresh = argparse.Namespace(**{**vars(args), **{k: DEFAULTS.get(k) for k in
                                      ("scan_interval", "max_connections", "idle_timeout",
                                       "message_timeout", "write_timeout")}})  # fmt: skip
        problem = apply_config(fresh, DEFAULTS)
        if problem:
            log.error("SIGHUP: %s; keeping the settings in use", problem)
            return
        daemon.scan_interval = fresh.scan_interval
        daemon.limits = server_limits(fresh)
        log.warning("SIGHUP: %s reread", args.config)

    loop.add_signal_handler(signal.SIGHUP, reload)
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
