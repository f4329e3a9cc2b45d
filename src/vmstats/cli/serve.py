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

from vmstats.cli.exporter import add_metrics_options, serve_metrics
from vmstats.cli.options import add_server_limits, positive_float, server_limits
from vmstats.exporter.http import MetricsEndpoint
from vmstats.serve.daemon import Daemon
from vmstats.serve.forward import DEFAULT_QMP_TIMEOUT

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/vmstats")
DEFAULTS: dict[str, object] = {}
ACTIONS: dict[str, argparse.Action] = {}


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
        "--qmp",
        action="append",
        default=[],
        metavar="PATH_OR_GLOB",
        help="a QEMU QMP socket (or a glob of them) to use as well: a QEMU 7.x that keeps "
        "no stats fds is forwarded, a newer one gets its VM-level stats from it (repeatable)",
    )
    serve.add_argument(
        "--qmp-timeout",
        type=positive_float,
        default=DEFAULT_QMP_TIMEOUT,
        metavar="S",
        help="seconds a QEMU socket may take per step before its VM's "
        f"request fails (default {DEFAULT_QMP_TIMEOUT:g})",
    )
    add_metrics_options(serve, "--metrics", None)
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings by option name (run-dir, group, scan-interval, qmp as a "
        "list, qmp-timeout, and the limits below); reread on SIGHUP",
    )
    serve.add_argument("--once", action="store_true",
                       help="print what would be served, and exit")  # fmt: skip
    add_server_limits(serve)
    serve.set_defaults(func=run_serve)
    DEFAULTS.update({action.dest: action.default for action in serve._actions})
    ACTIONS.update({action.dest: action for action in serve._actions})
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
SETTINGS = ("run-dir", "group", "scan-interval", "qmp", "qmp-timeout", "metrics",
            "scrape-timeout", "max-connections", "idle-timeout", "message-timeout",
            "write-timeout")  # fmt: skip
#: What SIGHUP changes in a running daemon (the others need a restart).
RELOADED = ("scan_interval", "qmp", "qmp_timeout", "max_connections", "idle_timeout",
            "message_timeout", "write_timeout")  # fmt: skip


def _setting(key: str, value: object) -> object:
    """A config value checked as its command-line option checks it; ValueError if wrong."""
    action = ACTIONS[key.replace("-", "_")]
    convert = action.type if callable(action.type) else str
    if action.nargs is None and isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        return [convert(v) for v in value]
    if isinstance(value, bool | list | dict):
        raise ValueError(f"must be a {'number' if action.type else 'string'}")
    try:
        return convert(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


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
        try:
            checked = _setting(key, value)
        except ValueError as exc:
            return f"{args.config}: {key}: {exc}"
        if getattr(args, attr) == parser_defaults.get(attr):
            setattr(args, attr, checked)
    return None


def _group(args: argparse.Namespace) -> int | None:
    if args.group is None:
        return None
    text = str(args.group)
    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group named {text!r}") from None


def _daemon(args: argparse.Namespace, group: int | None, fds: bool, dry_run: bool) -> Daemon:
    return Daemon(args.run_dir, group=group, scan_interval=args.scan_interval,
                  limits=server_limits(args), fds=fds, qmp=args.qmp,
                  qmp_timeout=args.qmp_timeout, dry_run=dry_run)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    problem = apply_config(args, DEFAULTS)
    if problem:
        print(f"vmstats serve: {problem}", file=sys.stderr)
        return 2
    try:
        group = _group(args)
    except ValueError as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        return 2
    fds = os.geteuid() == 0
    if not fds:
        if not args.qmp:
            print("vmstats serve: finding VMs by their stats fds needs root (CAP_SYS_PTRACE); "
                  "as this user only QMP sockets can be served: give them with --qmp",
                  file=sys.stderr)  # fmt: skip
            return 1
        log.warning("not root: VMs are not looked for by their stats fds (that needs "
                    "CAP_SYS_PTRACE); serving only the QMP sockets given")  # fmt: skip
    if args.once:
        return asyncio.run(_once(_daemon(args, group, fds, dry_run=True)))
    return asyncio.run(_serve(args, _daemon(args, group, fds, dry_run=False)))


async def _once(daemon: Daemon) -> int:
    await daemon.scan()
    rows = [vm.describe() for vm in daemon.served.values()]
    await daemon.close()
    sys.stdout.write(_table(rows) if rows else "no VM found\n")
    return 0


async def _serve(args: argparse.Namespace, daemon: Daemon) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:
        """SIGHUP: reread the config; the interval, the QMP sources, the limits of new
        sockets and of new /metrics connections follow."""
        if args.config is None:
            log.info("SIGHUP: no --config to reread")
            return
        fresh = argparse.Namespace(**{**vars(args), **{k: DEFAULTS.get(k) for k in RELOADED}})
        problem = apply_config(fresh, DEFAULTS)
        if problem:
            log.error("SIGHUP: %s; keeping the settings in use", problem)
            return
        daemon.scan_interval = fresh.scan_interval
        daemon.limits = server_limits(fresh)
        daemon.qmp = list(fresh.qmp)
        daemon.qmp_timeout = fresh.qmp_timeout
        log.warning("SIGHUP: %s reread", args.config)

    loop.add_signal_handler(signal.SIGHUP, reload)
    metrics = None
    if args.metrics is not None:
        endpoint = MetricsEndpoint(daemon.readers, loop, args.scrape_timeout, lambda: daemon.limits)
        metrics = asyncio.create_task(serve_metrics(endpoint, args.metrics, stop))
        await asyncio.sleep(0)
        if metrics.done() and metrics.result():
            return metrics.result()  # the address is taken: said already
    try:
        await daemon.run(stop)
    except OSError as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        stop.set()
        return 1
    finally:
        if metrics is not None:
            stop.set()
            await metrics
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
