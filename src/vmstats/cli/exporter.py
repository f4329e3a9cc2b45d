"""``vmstats exporter``: a Prometheus endpoint for VMs reached through QMP sockets, as any
user (someone's own QEMUs, or the read-only sockets of ``vmstats serve``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
from pathlib import Path

from vmstats.cli.options import add_server_limits, positive_float, server_limits, tcp_address
from vmstats.cli.options import default as option_default
from vmstats.errors import UsageError, os_reason
from vmstats.exporter.http import DEFAULT_SCRAPE_TIMEOUT, MetricsEndpoint
from vmstats.exporter.series import SeriesPolicy, read_series
from vmstats.exporter.sources import SocketReaders
from vmstats.exporter.webconfig import WebConfig, read_web_config
from vmstats.qmp.client import parse_address
from vmstats.reader.reading import unlistable

log = logging.getLogger(__name__)

#: Where the exporter listens unless told otherwise: loopback only.
DEFAULT_LISTEN = ("127.0.0.1", 9935)


def add_metrics_options(parser: argparse.ArgumentParser, option: str, default: object) -> None:
    """``--listen``/``--metrics`` and ``--scrape-timeout``, for both commands that export."""
    parser.add_argument(
        option,
        type=tcp_address,
        default=option_default(parser, default),
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to "
        "127.0.0.1: give 0.0.0.0 or an address to be reached from elsewhere)"
        + (f"; default {default[0]}:{default[1]}" if isinstance(default, tuple) else ""),
    )
    parser.add_argument(
        "--web-config",
        type=Path,
        default=option_default(parser, None),
        metavar="FILE",
        help="TLS and basic auth for /metrics, in Prometheus exporter-toolkit's format "
        "(tls_server_config, basic_auth_users with bcrypt hashes); reread on SIGHUP",
    )
    parser.add_argument(
        "--series",
        type=Path,
        default=option_default(parser, None),
        metavar="FILE",
        help='which series to export (TOML: vcpus = "each" or "vm", histograms, include '
        "and exclude metric name globs; docs/metrics.md); reread on SIGHUP",
    )
    parser.add_argument(
        "--scrape-timeout",
        type=positive_float,
        default=option_default(parser, DEFAULT_SCRAPE_TIMEOUT),
        metavar="S",
        help="seconds a VM may take to be read in one scrape; past it the VM is "
        f"vmstats_up 0 and the others are exported (default {DEFAULT_SCRAPE_TIMEOUT:g})",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("exporter", help="export the stats of VMs behind QMP sockets to Prometheus")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a QMP unix socket, HOST:PORT, or a directory whose *.qmp sockets are each a "
        "VM (vmstats serve's run directory; sockets that come and go are followed)",
    )
    add_metrics_options(p, "--listen", DEFAULT_LISTEN)
    add_server_limits(p)
    p.set_defaults(func=run)


async def open_metrics(endpoint: MetricsEndpoint, address: tuple[str, int]) -> bool:
    """Listen at ``address``; False, said on stderr, if it cannot be taken."""
    try:
        port = await endpoint.start(*address)
    except OSError as exc:
        print(f"vmstats: cannot listen on {address[0]}:{address[1]}: {os_reason(exc)}",
              file=sys.stderr)  # fmt: skip
        return False
    log.info("Prometheus metrics at %s://%s:%d/metrics%s", endpoint.scheme, address[0], port,
             " (basic auth)" if endpoint.auth.required else "")  # fmt: skip
    return True


def read_metrics_files(web: Path | None,
                       series: Path | None) -> tuple[WebConfig | None, SeriesPolicy]:  # fmt: skip
    """The web config and the series file (those given), read and checked;
    :class:`UsageError` naming the option whose file is wrong."""
    try:
        web_config = read_web_config(web) if web is not None else None
    except UsageError as exc:
        raise UsageError(f"--web-config: {exc}") from None
    try:
        policy = read_series(series) if series is not None else SeriesPolicy()
    except UsageError as exc:
        raise UsageError(f"--series: {exc}") from None
    return web_config, policy


def _use_files(endpoint: MetricsEndpoint, web: Path | None,
               series: Path | None) -> UsageError | None:  # fmt: skip
    """Read the web config and the series file (those given) into ``endpoint``; what is
    wrong with one, or None.  Both are taken or neither: the ones in use stay."""
    try:
        web_config, policy = read_metrics_files(web, series)
    except UsageError as exc:
        return exc
    if web_config is not None:
        endpoint.use_web_config(web_config)
    endpoint.exposition.policy = policy
    return None


def load_metrics_files(endpoint: MetricsEndpoint, web: Path | None, series: Path | None,
                       command: str) -> bool:  # fmt: skip
    """Take the web config and series file (those given) at start; False, said on
    stderr, if one is wrong."""
    wrong = _use_files(endpoint, web, series)
    if wrong is not None:
        print(f"vmstats {command}: {wrong}", file=sys.stderr)
    return wrong is None


def reload_metrics_files(endpoint: MetricsEndpoint, web: Path | None,
                         series: Path | None) -> None:  # fmt: skip
    """SIGHUP: reread the web config and the series file; a wrong one is logged and the
    ones in use kept."""
    wrong = _use_files(endpoint, web, series)
    if wrong is not None:
        log.error("SIGHUP: %s; keeping the one in use", wrong)
    elif web is not None or series is not None:
        log.info("SIGHUP: %s reread", " and ".join(str(p) for p in (web, series) if p))


def _source_problem(path: str) -> str | None:
    """Why a socket or directory SOURCE can never be scraped, or None."""
    try:
        is_directory = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return "no such socket or directory"
    except OSError as exc:
        return f"cannot be reached: {os_reason(exc)}"
    reason = unlistable(path) if is_directory else None
    return None if reason is None else f"cannot be listed: {reason}"


def run(args: argparse.Namespace) -> int:
    for source in args.sources:
        if isinstance(parse_address(source), str) and (problem := _source_problem(source)):
            print(f"vmstats exporter: {source}: {problem}", file=sys.stderr)
            return 2

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        readers = SocketReaders(list(args.sources), args.scrape_timeout)
        limits = server_limits(args)
        endpoint = MetricsEndpoint(readers, args.scrape_timeout, lambda: limits)
        if not load_metrics_files(endpoint, args.web_config, args.series, "exporter"):
            return 2
        loop.add_signal_handler(signal.SIGHUP, reload_metrics_files, endpoint, args.web_config,
                                args.series)  # fmt: skip
        if not await open_metrics(endpoint, args.listen):
            await endpoint.close()
            return 1
        await stop.wait()
        await endpoint.close()
        return 0

    return asyncio.run(main())
