"""The daemon's settings as one typed object: the defaults, then a TOML file (``--config``),
then what the command line gave, in that order.  A value in the file is checked as its
command-line option checks it (the same parser), and a mistake names the key.  SIGHUP
rereads the file and changes only what a running daemon can change (:data:`RELOADED`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from vmstats.cli.options import (
    bounded_int,
    non_negative_float,
    positive_float,
    run_dir_path,
    tcp_address,
    tracepoint_events,
)
from vmstats.errors import UsageError
from vmstats.exporter.http import DEFAULT_SCRAPE_TIMEOUT
from vmstats.libvirt.domain import DEFAULT_MAX_AGE
from vmstats.limits import ServerLimits
from vmstats.serve.access import AllowRule, allow_rule, group_id
from vmstats.serve.forward import DEFAULT_QMP_TIMEOUT
from vmstats.tomlfile import read_toml
from vmstats.trace.events import DEFAULT_EVENTS

DEFAULT_RUN_DIR = Path("/run/vmstats")
_LIMITS = ServerLimits()


@dataclass(frozen=True)
class ServeConfig:
    """What ``vmstats serve`` runs with.  Field names are the options' (``scan_interval``
    is ``--scan-interval`` and ``scan-interval`` in the file)."""

    run_dir: Path = DEFAULT_RUN_DIR
    group: str | None = None
    allow: tuple[AllowRule, ...] = ()
    scan_interval: float = 5.0
    qmp: tuple[str, ...] = ()
    qmp_timeout: float = DEFAULT_QMP_TIMEOUT
    libvirt: str | None = None
    libvirt_max_age: float = DEFAULT_MAX_AGE
    metrics: tuple[str, int] | None = None
    scrape_timeout: float = DEFAULT_SCRAPE_TIMEOUT
    web_config: Path | None = None
    series: Path | None = None
    tracepoints: tuple[str, ...] = DEFAULT_EVENTS
    max_connections: int = _LIMITS.max_connections
    idle_timeout: float = _LIMITS.idle_timeout
    message_timeout: float = _LIMITS.message_timeout
    write_timeout: float = _LIMITS.write_timeout

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(max_connections=self.max_connections,
                            idle_timeout=self.idle_timeout,
                            message_timeout=self.message_timeout,
                            write_timeout=self.write_timeout)  # fmt: skip

    def group_id(self) -> int | None:
        """The sockets' group as a number; :class:`UsageError` if no such group exists."""
        if self.group is None:
            return None
        try:
            return group_id(self.group)
        except ValueError as exc:
            raise UsageError(f"{exc}: create it (groupadd --system {self.group}, or "
                             "contrib/systemd's sysusers file) or give another with "
                             "--group") from None  # fmt: skip

    @classmethod
    def of(cls, file: Mapping[str, Any], given: Mapping[str, Any]) -> ServeConfig:
        """The defaults, overridden by the file's settings, overridden by the command line's."""
        return replace(cls(), **{**file, **given})

    def reloaded(self, file: Mapping[str, Any], given: Mapping[str, Any]) -> ServeConfig:
        """This config with what SIGHUP changes taken from a fresh read of the file (the
        command line still wins; a setting left out of the file returns to its default)."""
        fresh = ServeConfig.of(file, given)
        return replace(self, **{name: getattr(fresh, name) for name in RELOADED})


#: What SIGHUP changes in a running daemon; the others need a restart.
RELOADED = ("scan_interval", "qmp", "allow", "qmp_timeout", "max_connections", "idle_timeout",
            "message_timeout", "write_timeout", "web_config", "series")  # fmt: skip
#: Each setting's check: its command-line option's type.  :data:`LISTS` are lists of them.
CHECKS: dict[str, Callable[[str], Any]] = {
    "run_dir": run_dir_path,
    "group": str,
    "allow": allow_rule,
    "scan_interval": positive_float,
    "qmp": str,
    "qmp_timeout": positive_float,
    "libvirt": str,
    "libvirt_max_age": non_negative_float,
    "metrics": tcp_address,
    "scrape_timeout": positive_float,
    "web_config": Path,
    "series": Path,
    "tracepoints": tracepoint_events,
    "max_connections": bounded_int(1, 1 << 20),
    "idle_timeout": non_negative_float,
    "message_timeout": non_negative_float,
    "write_timeout": non_negative_float,
}
#: The settings given as a list in the file, and as a repeated option.
LISTS = ("qmp", "allow")
SETTINGS = tuple(f.name for f in fields(ServeConfig))
assert set(CHECKS) == set(SETTINGS)


def key(name: str) -> str:
    """A setting's name in the file and on the command line (``scan-interval``)."""
    return name.replace("_", "-")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave (its parser leaves the others unset)."""
    given = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    for name in LISTS:
        if name in given:
            given[name] = tuple(given[name])
    return given


def read_config(path: Path) -> dict[str, Any]:
    """The settings of a TOML file, checked; :class:`UsageError` naming what is wrong."""
    names = {key(name): name for name in SETTINGS}
    config = read_toml(path, names)
    out = {}
    for text, value in config.items():
        try:
            out[names[text]] = _checked(names[text], value)
        except ValueError as exc:
            raise UsageError(f"{path}: {text}: {exc}") from None
    return out


def _checked(name: str, value: object) -> object:
    """A file's value checked as its option checks it; ValueError if wrong."""
    check = CHECKS[name]
    try:
        if name in LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("must be a list of strings")
            return tuple(check(v) for v in value)
        if isinstance(value, bool | list | dict):
            kind = "string" if check in (str, Path, run_dir_path) else "number"
            raise ValueError(f"must be a {kind}")
        return check(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


__all__ = ["DEFAULT_RUN_DIR", "RELOADED", "ServeConfig", "given_settings", "key", "read_config"]
