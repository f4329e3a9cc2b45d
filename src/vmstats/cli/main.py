"""``vmstats`` entry point: parses the command line and hands over to a subcommand module."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from vmstats import __version__
from vmstats.cli import client, demo, exporter, serve, top
from vmstats.limits import raise_open_files_limit
from vmstats.stats.schema import STATS_QAPI


def _cmd_qapi(args: argparse.Namespace) -> int:
    """Print the stats QAPI declaration this build serves."""
    json.dump(STATS_QAPI, sys.stdout, indent=2)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmstats",
        description="Observe, monitor and measure KVM virtual machines (QEMU query-stats).",
    )
    parser.add_argument("--version", action="version", version=f"vmstats {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (INFO); -vv: what each step costs too")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    qapi = sub.add_parser("qapi", help="print the stats QAPI declaration (qapi/stats.json)")
    qapi.set_defaults(func=_cmd_qapi)
    demo.add_parser(sub)
    client.add_parsers(sub)
    top.add_parsers(sub)
    serve.add_parsers(sub)
    exporter.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand.  Its failures are one line on stderr and a status: 1 for an
    error, 2 for a usage error, 130 for Ctrl-C; a closed output pipe ends it quietly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The services (serve, exporter) say what they do at INFO, for journald: each VM
    # served and gone, where they listen.  The other commands only warn, unless -v.
    service = getattr(args, "command", None) in ("serve", "exporter")
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose or service
        else logging.WARNING,
        format="vmstats: %(levelname)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    # a daemon, top or an exporter holds fds per VM watched, a demo per vCPU
    before, after = raise_open_files_limit()
    if after != before:
        logging.getLogger("vmstats").debug("open files limit raised from %d to %d", before,
                                           after)  # fmt: skip
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output has gone (| head): say nothing, and keep Python's
        # final flush of stdout from complaining too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
