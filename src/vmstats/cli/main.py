"""``vmstats`` entry point: parses the command line and hands over to a subcommand module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from vmstats import __version__
from vmstats.cli import client, demo
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    qapi = sub.add_parser("qapi", help="print the stats QAPI declaration (qapi/stats.json)")
    qapi.set_defaults(func=_cmd_qapi)
    demo.add_parser(sub)
    client.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
