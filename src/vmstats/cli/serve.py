"""``vmstats serve`` (the host daemon) and ``vmstats list`` (what it serves)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from vmstats import caps
from vmstats.cli.exporter import (
    add_metrics_options,
    load_metrics_files,
    open_metrics,
    read_metrics_files,
    reload_metrics_files,
)
from vmstats.cli.options import (
    add_server_limits,
    add_tracepoints_option,
    non_negative_float,
    positive_float,
    run_dir_path,
)
from vmstats.cli.serve_config import (
    DEFAULT_RUN_DIR,
    ServeConfig,
    given_settings,
    read_config,
)
from vmstats.errors import LibvirtError, RunDirUnfit, SocketInUse, UsageError, os_reason
from vmstats.exporter.http import MetricsEndpoint
from vmstats.libvirt.host import DEFAULT_URI, libvirt_unavailable_reason
from vmstats.serve.access import allow_rule
from vmstats.serve.daemon import Daemon
from vmstats.serve.rundir import group_state, user_state
from vmstats.trace.provider import open_tracing

log = logging.getLogger(__name__)

#: What finding VMs by their stats fds takes: listing another user's /proc/PID/fd (a file
#: permission check), reading its links and copying the fds (ptrace rights).
FD_DISCOVERY = (caps.CAP_SYS_PTRACE, caps.CAP_DAC_READ_SEARCH)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Settings left out are unset (argument_default), not their defaults: a config file
    # fills them, and the defaults are ServeConfig's, which the help texts give.
    serve = sub.add_parser("serve", help="serve every VM of this host read-only (as root)",
                           argument_default=argparse.SUPPRESS)  # fmt: skip
    defaults = ServeConfig()
    serve.add_argument("--run-dir", type=run_dir_path, metavar="DIR",
                       help=f"where the sockets go (default {defaults.run_dir})")  # fmt: skip
    serve.add_argument("--group", metavar="GROUP", help="group of the sockets (mode 0660); "
                       "default: the daemon's own")  # fmt: skip
    serve.add_argument("--allow", action="append", type=allow_rule, metavar="RULE",
                       help="GROUP:SELECTOR[,SELECTOR...]: the group may read the VMs "
                       "selected by name=GLOB, owner=USER and domain=GLOB (a libvirt "
                       "domain's name or UUID), beside their owners and --group "
                       "(repeatable; docs/security.md)")  # fmt: skip
    serve.add_argument("--scan-interval", type=positive_float, metavar="S",
                       help="seconds between looks for new VMs "
                       f"(default {defaults.scan_interval:g})")  # fmt: skip
    serve.add_argument(
        "--qmp",
        action="append",
        metavar="PATH_OR_GLOB",
        help="a QEMU QMP socket (or a glob of them) to use as well: a QEMU 7.x that keeps "
        "no stats fds is forwarded, a newer one gets its VM-level stats from it (repeatable)",
    )
    serve.add_argument("--qmp-timeout", type=positive_float, metavar="S",
                       help="seconds a QEMU socket may take per step before its VM's request "
                       f"fails (default {defaults.qmp_timeout:g})")  # fmt: skip
    serve.add_argument("--libvirt", nargs="?", const=DEFAULT_URI, metavar="URI",
                       help="watch libvirt's domains too, on a read-only connection to URI "
                       f"(default {DEFAULT_URI}); needs vmstats[libvirt]")  # fmt: skip
    serve.add_argument("--libvirt-max-age", type=non_negative_float, metavar="S",
                       help="seconds a libvirt read of a domain is shared by all its readers "
                       f"(default {defaults.libvirt_max_age:g})")  # fmt: skip
    add_metrics_options(serve, "--metrics", None)
    add_tracepoints_option(serve, defaults.tracepoints)
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings by option name (run-dir, group, allow and qmp as lists, "
        "scan-interval, qmp-timeout, libvirt, libvirt-max-age, metrics, web-config, series, "
        "tracepoints, and the limits below); "
        "reread on SIGHUP",
    )
    serve.add_argument("--once", action="store_true", default=False,
                       help="print what would be served, and exit")  # fmt: skip
    add_server_limits(serve)
    serve.set_defaults(func=run_serve)
    listing = sub.add_parser("list", help="the VMs a vmstats serve daemon serves")
    listing.add_argument(
        "run_dir", nargs="?", type=run_dir_path, default=DEFAULT_RUN_DIR, metavar="RUN_DIR"
    )
    listing.set_defaults(func=run_list)


def _table(rows: list[dict[str, object]]) -> str:
    header = ["name", "pid", "vcpus", "source", "socket"]
    if any("uuid" in row for row in rows):  # libvirt's domains
        header.insert(1, "uuid")
    cells = [[str(r.get(h, "")) for h in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _daemon(config: ServeConfig, group: int | None, fds: bool, dry_run: bool) -> Daemon:
    return Daemon(config.run_dir, group=group, allow=config.allow,
                  scan_interval=config.scan_interval, limits=config.limits, fds=fds,
                  qmp=list(config.qmp),
                  qmp_timeout=config.qmp_timeout, libvirt=config.libvirt,
                  libvirt_max_age=config.libvirt_max_age,
                  dry_run=dry_run)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    given = given_settings(args)
    try:
        config = ServeConfig.of(read_config(args.config) if args.config else {}, given)
        group = config.group_id()
    except UsageError as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        return 2
    for option, value in (("--web-config", config.web_config), ("--series", config.series)):
        if value is not None and config.metrics is None:
            print(f"vmstats serve: {option} is for /metrics: give --metrics too",
                  file=sys.stderr)  # fmt: skip
            return 2
    if config.libvirt is not None and (reason := libvirt_unavailable_reason()) is not None:
        print(f"vmstats serve: --libvirt: {reason}", file=sys.stderr)
        return 1
    fds = caps.has(*FD_DISCOVERY)
    if not fds:
        if not config.qmp and config.libvirt is None:
            print("vmstats serve: finding VMs by their stats fds needs CAP_SYS_PTRACE and "
                  "CAP_DAC_READ_SEARCH (root has them); without them only QMP sockets and "
                  "libvirt's domains can be served: give them with --qmp or --libvirt",
                  file=sys.stderr)  # fmt: skip
            return 1
        log.warning("no CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: VMs are not looked for by "
                    "their stats fds; serving only the QMP sockets given and libvirt's "
                    "domains")  # fmt: skip
    if args.once:  # the files a real run reads are checked too: --once is its rehearsal
        try:
            read_metrics_files(config.web_config, config.series)
        except UsageError as exc:
            print(f"vmstats serve: {exc}", file=sys.stderr)
            return 1
        return asyncio.run(_once(_daemon(config, group, fds, dry_run=True)))
    return asyncio.run(_serve(args.config, given, config, _daemon(config, group, fds, False)))


async def _once(daemon: Daemon) -> int:
    if daemon.domains is not None:
        try:
            await daemon.domains.start(wait=False)
        except LibvirtError as exc:
            print(f"vmstats serve: {exc}", file=sys.stderr)
            return 1
    await daemon.scan()
    rows = [vm.describe() for vm in daemon.served.values()]
    await daemon.close()
    sys.stdout.write(_table(rows) if rows else "no VM found\n")
    return 0


async def _serve(path: Path | None, given: dict[str, object], config: ServeConfig,
                 daemon: Daemon) -> int:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    settings = config
    endpoint: MetricsEndpoint | None = None

    def reload() -> None:
        """SIGHUP: reread the config; the interval, the QMP sources, the limits of new
        sockets and of new /metrics connections, the allow rules follow; the web config
        and series files are reread, with a config or without."""
        nonlocal settings
        if path is None:
            log.info("SIGHUP: no --config to reread")
        else:
            try:
                settings = settings.reloaded(read_config(path), given)
            except UsageError as exc:
                log.error("SIGHUP: %s; keeping the settings in use", exc)
                return
            daemon.scan_interval = settings.scan_interval
            daemon.limits = settings.limits
            daemon.qmp = list(settings.qmp)
            daemon.qmp_timeout = settings.qmp_timeout
            daemon.set_allow(settings.allow)
            log.info("SIGHUP: %s reread", path)
        if endpoint is not None:  # the files named, anew or not
            reload_metrics_files(endpoint, settings.web_config, settings.series)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        daemon.rundir.claim()  # before anything listens: a second daemon stops here
    except (SocketInUse, RunDirUnfit, OSError) as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        return 1
    if config.metrics is not None:
        endpoint = MetricsEndpoint(daemon.readers, config.scrape_timeout, lambda: daemon.limits)
        if not (load_metrics_files(endpoint, config.web_config, config.series, "serve")
                and await open_metrics(endpoint, config.metrics)):  # fmt: skip
            await endpoint.close()
            daemon.rundir.release()
            return 1
    # exit reasons: counted from now on, the programs loaded with root's privileges
    daemon.tracing = open_tracing(config.tracepoints) if config.tracepoints else None
    if daemon.fds:  # the iterators too, that list every process's fds in one pass
        daemon.scanner.prepare()
    _drop_privileges(bool(config.qmp), daemon.tracing is not None)
    try:
        await daemon.run(stop)
    except (OSError, LibvirtError) as exc:
        print(f"vmstats serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if endpoint is not None:
            await endpoint.close()
    return 0


def _drop_privileges(qmp: bool, tracepoints: bool) -> None:
    """Listening, with the run directory claimed: keep only the capabilities the work
    needs (:data:`FD_DISCOVERY`, CAP_CHOWN to give sockets their group,
    CAP_DAC_OVERRIDE while QMP sockets are given: connecting to one needs write access to
    it, and CAP_BPF with CAP_PERFMON while exit reasons are counted: each new vCPU's
    counting needs them), for good."""
    held = caps.sets()["CapPrm"]
    keep = {*FD_DISCOVERY, caps.CAP_CHOWN} | ({caps.CAP_DAC_OVERRIDE} if qmp else set())
    keep |= {caps.CAP_PERFMON, caps.CAP_BPF} if tracepoints else set()
    dropped = held & ~sum(1 << c for c in keep)
    if not dropped:
        return
    try:
        caps.keep_only(keep)
    except OSError as exc:
        log.warning("could not drop capabilities: %s", os_reason(exc))
        return
    log.info("capabilities kept: %s", ", ".join(caps.names(caps.sets()["CapPrm"])) or "none")


def run_list(args: argparse.Namespace) -> int:
    """Every VM served, for the group; for anyone else, the VMs they may read: their own
    and those of their groups' ``allow`` rules."""
    state = args.run_dir / "vms.json"
    try:
        rows = json.loads(state.read_text())
    except PermissionError:  # not the group's
        if not os.access(args.run_dir, os.X_OK):
            print(f"vmstats list: cannot look into {args.run_dir}: Permission denied (a "
                  "vmstats serve run directory lets everyone through)",
                  file=sys.stderr)  # fmt: skip
            return 1
        try:
            rows = _readable_rows(args.run_dir)
        except (OSError, ValueError) as exc:
            print(f"vmstats list: {exc}", file=sys.stderr)
            return 1
        if not rows:
            sys.stdout.write("no VM you may read is served (the others are for the "
                             "daemon's group only)\n")  # fmt: skip
            return 0
    except FileNotFoundError:
        print(f"vmstats list: no vmstats serve runs with {args.run_dir} ({state} is missing)",
              file=sys.stderr)  # fmt: skip
        return 1
    except (OSError, ValueError) as exc:
        print(f"vmstats list: cannot read {state}: {exc}", file=sys.stderr)
        return 1
    refused = _refused(rows)
    if refused is not None:
        print(f"vmstats list: no vmstats serve runs with {args.run_dir}: its list is a "
              f"daemon's that ended without removing it (killed?), and nothing listens at "
              f"{refused}", file=sys.stderr)  # fmt: skip
        return 1
    sys.stdout.write(_table(rows) if rows else "no VM served\n")
    return 0


#: Listed sockets tried to tell whether their daemon still runs, at most.
PROBES = 4


def _refused(rows: list[dict[str, object]]) -> str | None:
    """A listed socket that refuses connections: the daemon that listed it is gone (a
    daemon killed outright leaves its list and sockets behind).  Sockets this user may not
    connect to tell nothing; the first that answers says the daemon is there.  A few are
    tried, a second each at most: a daemon whose clients fill its backlog is not waited
    for socket after socket."""
    for row in rows[:PROBES]:
        path = str(row.get("socket", ""))
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                return path
            except (OSError, ValueError):
                continue  # not ours to open, gone meanwhile, or busy
            return None
    return None


def _readable_rows(run_dir: Path) -> list[dict[str, object]]:
    """The rows of this user's list and of their groups' lists, each VM once, by name."""
    lists = [user_state(run_dir, os.getuid())]
    lists += [group_state(run_dir, gid) for gid in sorted({os.getgid(), *os.getgroups()})]
    rows: dict[str, dict[str, object]] = {}
    for path in lists:
        try:
            text = path.read_text()
        except (FileNotFoundError, PermissionError):
            continue
        except OSError as exc:
            raise OSError(f"cannot read {path}: {os_reason(exc)}") from None
        try:
            found = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        for row in found:
            rows.setdefault(str(row.get("name")), row)
    return [rows[name] for name in sorted(rows)]
