"""``vmstats query``, ``vmstats schemas``, ``vmstats info``: ask any QMP socket for stats."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from rich.console import Console

from vmstats.cli.render import index_schemas, print_results, print_schemas
from vmstats.errors import ClientError
from vmstats.qapi.json import dumps
from vmstats.qmp.client import StatsClient, make_filter
from vmstats.stats.model import StatsProvider


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list; spaces around items are dropped
    (``'pages_4k, pages_2m'`` is two names)."""
    return None if text is None else [item.strip() for item in text.split(",")]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    socket_help = "QMP socket: a unix socket path, or HOST:PORT"
    q = sub.add_parser("query", help="query-stats on a QMP socket (QEMU or vmstats)")
    q.add_argument("socket", help=socket_help)
    q.add_argument("--target", required=True, choices=["vm", "vcpu", "cryptodev"])
    q.add_argument("--provider", choices=[p.value for p in StatsProvider])
    q.add_argument("--names", help="comma-separated stat names")
    q.add_argument("--vcpus", help="comma-separated QOM paths of vCPUs")
    q.add_argument("--json", action="store_true", help="print the reply's return value as sent")
    q.set_defaults(func=lambda a: _run(a, _query))
    s = sub.add_parser("schemas", help="query-stats-schemas on a QMP socket")
    s.add_argument("socket", help=socket_help)
    s.add_argument("--provider", choices=[p.value for p in StatsProvider])
    s.add_argument("--json", action="store_true", help="print the reply's return value as sent")
    s.set_defaults(func=lambda a: _run(a, _schemas))
    i = sub.add_parser("info", help="HMP 'info stats' through human-monitor-command")
    i.add_argument("socket", help=socket_help)
    i.add_argument("target")
    i.add_argument("names", nargs="?")
    i.add_argument("provider", nargs="?")
    i.set_defaults(func=lambda a: _run(a, _info))


async def _query(client: StatsClient, args: argparse.Namespace, console: Console) -> None:
    filter = make_filter(args.target, args.provider, split_list(args.names), split_list(args.vcpus))
    if args.json:
        print(dumps(await client.raw("query-stats", client.stats_arguments(filter))))
        return
    provider = StatsProvider(args.provider) if args.provider else None
    schemas = index_schemas(await client.query_stats_schemas(provider))
    print_results(console, filter.target, await client.query_stats(filter), schemas)


async def _schemas(client: StatsClient, args: argparse.Namespace, console: Console) -> None:
    arguments = {"provider": args.provider} if args.provider else None
    if args.json:
        print(dumps(await client.raw("query-stats-schemas", arguments)))
        return
    provider = StatsProvider(args.provider) if args.provider else None
    print_schemas(console, await client.query_stats_schemas(provider))


async def _info(client: StatsClient, args: argparse.Namespace, console: Console) -> None:
    words = [w for w in ("info stats", args.target, args.names, args.provider) if w]
    sys.stdout.write((await client.hmp(" ".join(words))).replace("\r\n", "\n"))


Command = Callable[[StatsClient, argparse.Namespace, Console], Awaitable[None]]


def _run(args: argparse.Namespace, command: Command) -> int:
    async def main() -> None:
        async with StatsClient(args.socket) as client:
            await command(client, args, Console())

    try:
        asyncio.run(main())
    except ClientError as exc:
        print(f"vmstats: {exc}", file=sys.stderr)
        return 1
    return 0
