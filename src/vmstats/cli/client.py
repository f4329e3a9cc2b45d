"""``vmstats query``, ``vmstats schemas``, ``vmstats info``: ask any QMP socket for stats.

What the user asks for is checked against what the server serves (its
``query-stats-schemas``), so a mistyped stat, target or provider is an error naming it
(exit 2), never a silent empty answer.  vCPUs are given by number, as QEMU's CPU index,
and mapped to QOM paths with ``query-cpus-fast`` (QEMU's paths are not contiguous).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from vmstats.cli.options import positive_float
from vmstats.cli.render import index_schemas, results_text, schemas_text
from vmstats.errors import ClientError, UsageError
from vmstats.qmp.client import DEFAULT_TIMEOUT, QmpClient, make_filter, stats_arguments
from vmstats.stats.model import StatsProvider, StatsSchema, StatsTarget


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list; spaces around items are dropped
    (``'pages_4k, pages_2m'`` is two names)."""
    return None if text is None else [item.strip() for item in text.split(",")]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    socket_help = "QMP socket: a unix socket path, or HOST:PORT"

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("socket", help=socket_help)
        parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                            metavar="S", help="seconds to wait for each answer "
                            f"(default {DEFAULT_TIMEOUT:g})")  # fmt: skip

    q = sub.add_parser("query", help="query-stats on a QMP socket (QEMU or vmstats)")
    common(q)
    q.add_argument("--target", required=True, help="vm, vcpu (or what the server offers)")
    q.add_argument("--provider", help="kvm (or what the server offers)")
    q.add_argument("--names", help="comma-separated stat names")
    q.add_argument("--vcpus", help="comma-separated vCPU numbers (QEMU's CPU index), or QOM paths")
    q.add_argument("--json", action="store_true", help="print the reply's return value as sent")
    q.set_defaults(func=lambda a: _run(a, _query))
    s = sub.add_parser("schemas", help="query-stats-schemas on a QMP socket")
    common(s)
    s.add_argument("--provider", help="kvm (or what the server offers)")
    s.add_argument("--json", action="store_true", help="print the reply's return value as sent")
    s.set_defaults(func=lambda a: _run(a, _schemas))
    i = sub.add_parser("info", help="HMP 'info stats' through human-monitor-command")
    common(i)
    i.add_argument("target")
    i.add_argument("names", nargs="?")
    i.add_argument("provider", nargs="?")
    i.set_defaults(func=lambda a: _run(a, _info))


def _check_choice(kind: str, value: str | None, offered: set[str]) -> None:
    if value is not None and value not in offered:
        raise UsageError(f"unknown {kind} {value!r}: this server offers "
                         f"{', '.join(sorted(offered)) or 'none'}")  # fmt: skip


def check_request(schemas: list[StatsSchema], target: str, provider: str | None,
                  names: list[str] | None) -> None:  # fmt: skip
    """Raise :class:`UsageError` for a target, provider or stat the server does not serve."""
    _check_choice("target", target, {s.target.value for s in schemas} | {"vm", "vcpu"})
    _check_choice("provider", provider, {s.provider.value for s in schemas})
    if names:
        known = {
            v.name
            for s in schemas
            if s.target.value == target and provider in (None, s.provider.value)
            for v in s.stats
        }
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(
                f"unknown stat name{'s' if len(unknown) > 1 else ''} for target {target}: "
                f"{', '.join(unknown)} (vmstats schemas SOCKET lists them)"
            )


async def _vcpu_paths(vcpus: list[str] | None, paths: list[str]) -> list[str] | None:
    """``--vcpus`` (numbers, or QOM paths) as QOM paths; ``paths``: the VM's by number."""
    if vcpus is None:
        return None
    out = []
    for item in vcpus:
        if item.startswith("/"):
            out.append(item)
            continue
        if not item.isdigit() or int(item) >= len(paths):
            raise UsageError(f"no vCPU {item!r}: this VM has vCPUs 0 to {len(paths) - 1}")
        out.append(paths[int(item)])
    return out


async def _query(client: QmpClient, args: argparse.Namespace) -> None:
    schemas = await client.all_schemas()
    names = split_list(args.names)
    check_request(schemas, args.target, args.provider, names)
    paths = await client.query_cpus() if args.target == "vcpu" or args.vcpus else []
    vcpus = await _vcpu_paths(split_list(args.vcpus), paths)
    filter = make_filter(args.target, args.provider, names, vcpus)
    if args.json:
        _write_raw(await client.execute("query-stats", stats_arguments(filter)))
        return
    results = await client.query_stats(filter)
    numbers = {path: number for number, path in enumerate(paths)}
    sys.stdout.write(results_text(filter.target, results, index_schemas(schemas), numbers))


async def _schemas(client: QmpClient, args: argparse.Namespace) -> None:
    if args.provider is not None:
        check_request(await client.all_schemas(), "vm", args.provider, None)
    if args.json:
        arguments = {"provider": args.provider} if args.provider else None
        _write_raw(await client.execute("query-stats-schemas", arguments))
        return
    provider = StatsProvider(args.provider) if args.provider else None
    sys.stdout.write(schemas_text(await client.query_stats_schemas(provider)))


def _write_raw(value: bytes) -> None:
    """A return value as the server wrote it (``--json``)."""
    sys.stdout.buffer.write(value + b"\n")
    sys.stdout.flush()


#: The first words of HMP's answers to a bad request (QEMU prints them and succeeds).
HMP_ERRORS = ("invalid stats target", "invalid stats provider", "unknown command",
              "Try \"help", "failed to find schema")  # fmt: skip


def _hmp_words(args: argparse.Namespace) -> list[str]:
    """``info``'s arguments as HMP takes them: target, names, provider."""
    return [w for w in (args.target, args.names, args.provider) if w]


async def _info(client: QmpClient, args: argparse.Namespace) -> None:
    words = ["info stats", *_hmp_words(args)]
    text = (await client.hmp(" ".join(words))).replace("\r\n", "\n")
    sys.stdout.write(text)
    if text.startswith(HMP_ERRORS):
        raise ClientError(f"HMP refused 'info stats {' '.join(words[1:])}'")
    if not text:  # QEMU prints nothing then: say why, on stderr (stdout stays QEMU's)
        await _explain_nothing(client, args)


async def _explain_nothing(client: QmpClient, args: argparse.Namespace) -> None:
    """An empty ``info stats``: a name the server does not serve is a usage error (HMP
    takes ``names`` second, so ``info stats vcpu kvm`` asks for a stat called kvm),
    else the VM has nothing for that request."""
    schemas = await client.all_schemas()
    names = [] if args.names in (None, "*") else [n for n in args.names.split(",") if n]
    try:
        check_request(schemas, args.target, args.provider, names)
    except UsageError as exc:
        providers = {s.provider.value for s in schemas}
        if any(name in providers for name in names):
            raise UsageError(f"{exc}; a provider goes third, after the names: "
                             f"info SOCKET {args.target} '*' PROVIDER") from None  # fmt: skip
        raise
    print(
        f"vmstats: no statistics matched 'info stats {' '.join(_hmp_words(args))}'", file=sys.stderr
    )


Command = Callable[[QmpClient, argparse.Namespace], Awaitable[None]]


def _run(args: argparse.Namespace, command: Command) -> int:
    async def main() -> None:
        async with QmpClient(args.socket, args.timeout) as client:
            await client.stats_commands()  # a clear error for a QEMU without query-stats
            await command(client, args)

    try:
        asyncio.run(main())
    except UsageError as exc:
        print(f"vmstats: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"vmstats: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["StatsTarget", "add_parsers", "check_request", "split_list"]
