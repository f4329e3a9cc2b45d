"""``vmstats top`` and ``vmstats record``: kvm_stat's job for any VM, without root.

SOURCE is a QMP socket (path or ``HOST:PORT``) or a directory whose ``*.qmp`` sockets are
all watched (picked up as they appear).  Full screen by default; ``-1``, ``-l``, ``-L``,
``-c`` and ``--json`` are kvm_stat's batch modes; ``--replay FILE`` reads a recording
instead of sockets, in the view or in any batch mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

from vmstats.cli.options import folder_problem, non_negative_float, positive_float
from vmstats.errors import UsageError, VmstatsError
from vmstats.qmp.client import DEFAULT_TIMEOUT
from vmstats.reader.reading import QmpReader, Reader, socket_addresses, unlistable
from vmstats.top.batch import JsonWriter, OnceWriter, Output, TableWriter, Writer
from vmstats.top.drive import Driver, LiveDriver, ReplayDriver
from vmstats.top.frame import StatFilter
from vmstats.top.record import Recorder, read_recording
from vmstats.top.watch import Changes, Watch


def vcpu_numbers(text: str) -> list[int]:
    """``0,2,5-7`` -> [0, 2, 5, 6, 7]."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a vCPU number or range: {part!r}") from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"not a vCPU number or range: {part!r}")
        out += range(first, last + 1)
    return out


def stat_filter(text: str) -> StatFilter | str:
    if text == "help":
        return text
    try:
        return StatFilter(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({exc})") from None


def _add_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="QMP socket (path or HOST:PORT), or a directory of *.qmp sockets",
    )
    parser.add_argument(
        "-s",
        "--interval",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="seconds between refreshes (default 3)",
    )
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to wait for an answer ({DEFAULT_TIMEOUT:g})")  # fmt: skip


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("top", help="live view of every stat of every VM (kvm_stat's job)",
                         description=__doc__)  # fmt: skip
    _add_sources(top)
    top.add_argument("-1", "--once", action="store_true", help="one refresh, printed, then exit")
    modes = top.add_mutually_exclusive_group()
    modes.add_argument("-l", "--log", action="store_true", help="one line per VM per refresh")
    modes.add_argument(
        "-L",
        "--log-to-file",
        type=Path,
        metavar="FILE",
        help="as --log, to FILE, reopened on SIGHUP (logrotate)",
    )
    modes.add_argument("--json", action="store_true", help="one JSON object per refresh")
    top.add_argument("-c", "--csv", action="store_true", help="with -l or -L: comma-separated")
    top.add_argument(
        "-z", "--skip-zero", action="store_true", help="leave out all-zero stats/lines"
    )
    top.add_argument(
        "-f",
        "--fields",
        type=stat_filter,
        metavar="REGEX",
        help="stats whose names match REGEX at the start ('help' lists them)",
    )
    top.add_argument(
        "--vcpus",
        type=vcpu_numbers,
        metavar="N,M",
        help="only these vCPUs (numbers, as QEMU's CPU index; ranges as 0-3)",
    )
    top.add_argument("--replay", type=Path, metavar="FILE", help="play a recording back")
    top.add_argument(
        "--speed",
        type=non_negative_float,
        default=1.0,
        metavar="X",
        help="replay speed (default 1; 0: as fast as possible)",
    )
    top.set_defaults(func=run_top)  # fmt: skip
    record = sub.add_parser("record", help="record samples to a file (JSON Lines, .gz ok)")
    _add_sources(record)
    record.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    record.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    record.set_defaults(func=run_record)


def _watch(args: argparse.Namespace) -> Watch:
    """What the SOURCE arguments name: sockets, and directories watched for them.  A
    directory that cannot be listed is refused: no socket would ever show up in it."""
    directories: list[Path] = []
    sockets: list[str] = []
    for text in args.sources:
        if not os.path.isdir(text):
            sockets.append(text)
        elif (reason := unlistable(text)) is not None:
            raise VmstatsError(f"{text} cannot be listed ({reason}): give the sockets "
                               f"of your VMs instead (vmstats list {text} shows "
                               "them)")  # fmt: skip
        else:
            directories.append(Path(text))
    files = socket_addresses(sockets)
    readers: list[Reader] = [QmpReader(text, args.timeout) for text in files]
    return Watch(readers, directories, args.timeout)


def _check(args: argparse.Namespace) -> str | None:
    """A usage problem in words, or None."""
    if args.func is run_top and args.replay is not None:
        if args.sources:
            return "give either SOURCE sockets or --replay, not both"
        return None
    if not args.sources:
        return "give at least one SOURCE (a QMP socket or a directory of them)"
    if args.func is run_top and args.csv and not (args.log or args.log_to_file or args.replay):
        return "-c/--csv goes with -l, -L or --replay"
    if (args.func is run_top and not _batch_mode(args) and args.fields != "help"
            and not _in_a_terminal()):  # fmt: skip
        return ("the full-screen view needs a terminal: give -1, -l, -L FILE or --json for "
                "lines that a pipe or a file can take")  # fmt: skip
    return None


def _batch_mode(args: argparse.Namespace) -> bool:
    return bool(args.once or args.log or args.log_to_file or args.json or args.csv)


def _in_a_terminal() -> bool:
    """Are both stdin (the keys) and stdout (the screen) a terminal?  Without one the view
    writes escape codes into a pipe and waits for keys that never come."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout))


def run_top(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"vmstats top: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_top(args))
    except UsageError as exc:
        print(f"vmstats top: {exc}", file=sys.stderr)
        return 2
    except VmstatsError as exc:
        print(f"vmstats top: {exc}", file=sys.stderr)
        return 1


async def _top(args: argparse.Namespace) -> int:
    batch = _batch_mode(args)
    driver: Driver
    if args.replay is not None:  # batch modes convert a recording as fast as they can
        watch = Watch()
        driver = ReplayDriver(watch, read_recording(args.replay), 0.0 if batch else args.speed)
    else:
        watch = _watch(args)
        driver = LiveDriver(watch, args.interval)
    if args.fields == "help":
        return await _list_stats(driver)
    if batch:
        return await _batch(args, driver)
    from vmstats.top.app import TopApp

    title = "vmstats top: " + (str(args.replay) if args.replay else ", ".join(args.sources))
    app = TopApp(driver, title, args.fields, args.vcpus)
    result = await app.run_async()
    return result or 0


async def _list_stats(driver: Driver) -> int:
    await driver.step()
    names = {f"{target}.{name}" for state in driver.watch.vms.values()
             for (_, target, name) in state.schemas.entries}  # fmt: skip
    gone = [f"{s.name}: {s.gone}" for s in driver.watch.vms.values() if s.gone]
    if not names and gone:
        raise VmstatsError("; ".join(gone))
    print("\n".join(sorted(names)))
    return 0


async def _batch(args: argparse.Namespace, driver: Driver) -> int:
    out = Output(path=args.log_to_file) if args.log_to_file else Output(stream=sys.stdout)
    writer: Writer
    if args.json:
        writer = JsonWriter(out, args.skip_zero)
    elif args.log or args.log_to_file or args.csv:
        writer = TableWriter(out, args.skip_zero, csv=args.csv)
    else:
        writer = OnceWriter(out, args.skip_zero)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    keep = args.fields if isinstance(args.fields, StatFilter) else None
    delay = await driver.step()
    watch = driver.watch
    if not watch.vms:
        if args.once:
            raise VmstatsError(f"no VM to show: {', '.join(args.sources)} hold(s) no *.qmp "
                               "socket")  # fmt: skip
        print(f"vmstats top: no VM yet in {', '.join(args.sources)}; waiting for one",
              file=sys.stderr)  # fmt: skip
    elif all(s.gone for s in watch.vms.values()):
        raise VmstatsError("; ".join(f"{s.name}: {s.gone}" for s in watch.vms.values()))
    _check_selection(watch, keep, args.vcpus)
    if args.once:
        watch.count_from_zero()
    changes = Changes()
    changes(watch)  # what the first read found is not news
    while delay is not None and not stop.is_set():
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                break
        delay = await driver.step()
        if delay is None:
            break
        per_vm, total = watch.rows(keep, args.vcpus)
        gone = {name: state.gone for name, state in watch.vms.items()}
        writer(watch.taken, per_vm, total, gone)
        if not args.once:
            for change in changes(watch):
                print(f"vmstats top: {change}", file=sys.stderr)
        if args.once:
            break
    return 0


def _check_selection(watch: Watch, keep: StatFilter | None, vcpus: list[int] | None) -> None:
    """:class:`UsageError` for ``-f`` or ``--vcpus`` that select nothing of the VMs read
    (the output would be empty, silently)."""
    live = [state for state in watch.vms.values() if state.gone is None and state.schemas.entries]
    if not live:
        return
    if keep is not None and not any(keep(name) for state in live
                                    for (_, _, name) in state.schemas.entries):  # fmt: skip
        raise UsageError(f"no stat matches -f {keep.pattern!r} (-f help lists them)")
    if vcpus and not any(i < len(state.cpus) for state in live for i in vcpus):
        most = max(len(state.cpus) for state in live)
        has = f"vCPUs 0 to {most - 1}" if most else "no vCPU"
        raise UsageError(f"no vCPU {','.join(map(str, vcpus))}: the VM has {has}")


def run_record(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"vmstats record: {problem}", file=sys.stderr)
        return 2
    problem = folder_problem(args.output)
    if problem is not None:
        print(f"vmstats record: cannot write {args.output}: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_record(args))
    except (VmstatsError, OSError) as exc:
        print(f"vmstats record: {exc}", file=sys.stderr)
        return 1


async def _record(args: argparse.Namespace) -> int:
    watch = _watch(args)
    recorder = Recorder(args.output, args.interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    deadline = time.monotonic() + args.duration if args.duration else None
    changes = Changes()
    samples = 0
    try:
        while not stop.is_set():
            await watch.refresh()
            recorder.record(watch)
            samples += sum(s.gone is None and s.current is not None for s in watch.vms.values())
            for change in changes(watch):
                print(f"vmstats record: {change}", file=sys.stderr)
            remaining = args.interval
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await stop.wait()
    finally:
        recorder.close()
    if not samples:
        print(
            f"vmstats record: no sample could be taken; {args.output} holds none", file=sys.stderr
        )
        return 1
    return 0
