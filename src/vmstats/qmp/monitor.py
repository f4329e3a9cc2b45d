"""A QMP monitor over a stats registry: the schema it serves and its command handlers.

One :class:`Monitor` serves any number of sessions; what differs per connection (the
negotiation state) lives in :class:`vmstats.qmp.session.QMPSession`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Any

from vmstats import __version__
from vmstats.qapi.dispatch import Dispatcher, Handler
from vmstats.qapi.introspect import Introspector
from vmstats.qapi.output import OutputEncoder
from vmstats.qapi.schema import Schema, Version
from vmstats.qmp.control import (
    CONTROL_QAPI,
    QEMU_7_2_INTROSPECTION_NAMES,
    QUERY_COMMANDS_ORDER,
    SCHEMA_COMMAND_ORDER,
)
from vmstats.qmp.hmp import HumanMonitor
from vmstats.qmp.machine import CpuInfoFast, Machine
from vmstats.stats.commands import stats_handlers
from vmstats.stats.model import StatsProvider, StatsTarget
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.schema import BINDINGS, DEFAULT_VERSION, STATS_QAPI

PACKAGE = f"vmstats {__version__}"


@functools.cache
def _wire(major: int, minor: int) -> tuple[Schema, OutputEncoder, list[Any]]:
    """The schema, encoder and introspection of a QEMU release's wire: the same for every
    monitor of a release, and made once (a host daemon has a monitor per VM: made per
    monitor, they were most of the cost of serving a VM)."""
    schema = Schema(CONTROL_QAPI + STATS_QAPI, version=(major, minor), bindings=BINDINGS)
    introspection = Introspector(schema, QEMU_7_2_INTROSPECTION_NAMES).entries(SCHEMA_COMMAND_ORDER)
    return schema, OutputEncoder(schema), introspection


class Monitor:
    """Everything a QMP connection can ask of one VM's stats.

    ``machine`` names the VM and lists its vCPUs by CPU index (``query-name``,
    ``query-cpus-fast``, HMP ``cpu`` and ``info stats vcpu``).  ``version`` is the QEMU
    release whose wire is reproduced; the greeting and ``query-version`` report it, with
    ``package`` naming vmstats, so tools that gate features on QEMU's version see the API
    they get.
    """

    def __init__(
        self,
        registry: StatsRegistry,
        machine: Machine | None = None,
        *,
        version: Version | tuple[int, int, int] = DEFAULT_VERSION,
        package: str = PACKAGE,
    ) -> None:
        self.registry = registry
        self.machine = machine or Machine()
        major, minor = version[0], version[1]
        self.schema, self.encoder, self._introspection = _wire(major, minor)
        self.version_triple = (major, minor, version[2] if len(version) > 2 else 0)
        self.package = package

    # Made when first asked for: a host daemon makes a monitor for each of hundreds of
    # VMs in its first scan, and most are never asked anything by HMP (22 us a monitor).

    @functools.cached_property
    def hmp(self) -> HumanMonitor:
        """The human monitor (``human-monitor-command``)."""
        providers = [StatsProvider(v) for v in self._enum_values("StatsProvider")]
        return HumanMonitor(self.registry, self.machine.qom_paths, self.version_triple,
                            self.package, providers)  # fmt: skip

    @functools.cached_property
    def handlers(self) -> dict[str, Handler]:
        """The commands a negotiated session may run, by name."""
        return self._handlers()

    def _handlers(self) -> dict[str, Handler]:
        return {
            "query-version": self.query_version,
            "query-commands": self.query_commands,
            "query-qmp-schema": self.query_qmp_schema,
            "human-monitor-command": self.human_monitor_command,
            "query-name": self.query_name,
            "query-cpus-fast": self.query_cpus_fast,
            **stats_handlers(self.registry),
        }

    def forwards(self, target: str) -> bool:
        """Are ``target``'s stats asked of another monitor (a QEMU), not read here?"""
        return False

    def fresh(self, target: StatsTarget) -> Awaitable[None] | None:
        """None when ``target``'s stats can be read here now, else what to await first
        (values that come from elsewhere and are read on demand)."""
        return None

    def _enum_values(self, name: str) -> tuple[str, ...]:
        values: tuple[str, ...] = getattr(self.schema.lookup(name), "values", ())
        return values

    def dispatcher(self, qmp_capabilities: Handler, *, negotiated: bool) -> Dispatcher:
        """Commands for one session: only ``qmp_capabilities`` until negotiation is done."""
        handlers = {"qmp_capabilities": qmp_capabilities}
        if negotiated:
            handlers.update(self.handlers)
        return Dispatcher(self.schema, handlers, encoder=self.encoder)

    # -- command handlers -----------------------------------------------------------

    def version_info(self) -> dict[str, Any]:
        major, minor, micro = self.version_triple
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": self.package}

    def query_version(self) -> dict[str, Any]:
        return self.version_info()

    def query_commands(self) -> list[dict[str, str]]:
        return [{"name": name} for name in QUERY_COMMANDS_ORDER]

    def query_qmp_schema(self) -> list[dict[str, Any]]:
        return self._introspection

    def query_name(self) -> dict[str, Any]:
        return self.machine.query_name()

    def query_cpus_fast(self) -> list[CpuInfoFast]:
        return self.machine.query_cpus_fast()

    def human_monitor_command(self, command_line: str, cpu_index: int | None = None) -> str:
        return self.hmp.execute(command_line, cpu_index)
