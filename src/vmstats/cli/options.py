"""Argument types shared by the subcommands: a bad value is a usage error (exit 2)
naming the option, never a traceback or a silent wrap-around."""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from vmstats.errors import os_reason
from vmstats.limits import ServerLimits


def positive_float(text: str) -> float:
    """A finite number > 0 (intervals, timeouts)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (rates, where 0 means 'flat out')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, not {text}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


def tcp_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT``; HOST defaults to loopback, PORT is 0 to 65535."""
    host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a [HOST:]PORT: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return host.strip("[]") or "127.0.0.1", port


def folder_problem(path: Path) -> str | None:
    """Why no file can be made at ``path`` for want of its folder (missing, not a
    folder, or not ours to enter), or None."""
    try:
        if stat.S_ISDIR(os.stat(path.parent).st_mode):
            return None
        return f"{path.parent} is not a folder"
    except FileNotFoundError:
        return f"folder {path.parent} does not exist"
    except OSError as exc:
        return f"folder {path.parent} cannot be used: {os_reason(exc)}"


def socket_path(text: str) -> Path:
    """A path for a new unix socket: its folder must exist (checked before any work)."""
    path = Path(text)
    problem = folder_problem(path)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"cannot create {text}: {problem}")
    return path


def run_dir_path(text: str) -> Path:
    """A run directory: not empty (that would be the current directory), and absolute (the
    daemon lists its sockets' paths for other users)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: give the directory")
    return Path(text).absolute()


def tracepoint_events(text: str) -> tuple[str, ...]:
    """``EVENT[,EVENT...]`` (events of tracefs's ``kvm`` system, or ``SYSTEM:EVENT``; ``*``
    for every event, as kvm_stat's full view) to count per vCPU, or ``none``."""
    if text.strip() == "none":
        return ()
    events = tuple(e.strip() for e in text.split(","))
    for event in events:
        if not re.fullmatch(r"(\w+:)?(\w+|\*)", event):
            raise argparse.ArgumentTypeError(f"not a tracepoint: {event!r} (give EVENT[,EVENT"
                                             "...], SYSTEM:EVENT, or none)")  # fmt: skip
    return events


def add_tracepoints_option(parser: argparse.ArgumentParser, default_events: Sequence[str]) -> None:
    """``--tracepoints``: which events are counted per vCPU (exit reasons)."""
    parser.add_argument("--tracepoints", type=tracepoint_events, metavar="EVENTS",
                        default=default(parser, tuple(default_events)),
                        help="tracepoints counted per vCPU thread, served as provider "
                        "'tracepoints' (exit reasons; needs root, or CAP_BPF and "
                        f"CAP_PERFMON): EVENT[,EVENT...] ('*': every kvm event, as kvm_stat "
                        f"shows them) or none (default "
                        f"{','.join(default_events)}: kvm_stat's splits by reason)")  # fmt: skip


def default(parser: argparse.ArgumentParser, value: object) -> object:
    """``value``, unless ``parser`` leaves options it was not given unset (its
    ``argument_default`` is ``SUPPRESS``: the daemon, whose config file fills them)."""
    return argparse.SUPPRESS if parser.argument_default == argparse.SUPPRESS else value


def add_server_limits(parser: argparse.ArgumentParser) -> None:
    """Options for :class:`vmstats.limits.ServerLimits`, for every command that serves."""
    defaults = ServerLimits()
    group = parser.add_argument_group(
        "limits per client, of each QMP socket and of /metrics (0 disables a timeout)"
    )
    group.add_argument(
        "--max-connections",
        type=bounded_int(1, 1 << 20),
        metavar="N",
        default=default(parser, defaults.max_connections),
        help=f"clients at once (default {defaults.max_connections}; "
        "always kept below the fd limit)",
    )
    group.add_argument(
        "--idle-timeout",
        type=non_negative_float,
        metavar="S",
        default=default(parser, defaults.idle_timeout),
        help=f"close a client silent this long (default {defaults.idle_timeout:g})",
    )
    group.add_argument(
        "--message-timeout",
        type=non_negative_float,
        metavar="S",
        default=default(parser, defaults.message_timeout),
        help="close a client whose message stays half-sent this long "
        f"(default {defaults.message_timeout:g})",
    )
    group.add_argument("--write-timeout", type=non_negative_float, metavar="S",
                       default=default(parser, defaults.write_timeout),
                       help="drop a client that does not read its replies this long "
                            f"(default {defaults.write_timeout:g})")  # fmt: skip


def server_limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        message_timeout=args.message_timeout,
        write_timeout=args.write_timeout,
    )
