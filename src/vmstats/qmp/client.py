"""A stats client for any QMP socket, real QEMU or vmstats, built on ``qemu.qmp``.

Replies are decoded into the stats model with the same visitor that checks our server's
input, so a malformed reply is an error that says what is wrong, not a KeyError later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from vmstats.errors import ClientError, QapiError
from vmstats.qapi.visitor import visit
from vmstats.stats.model import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
)
from vmstats.stats.schema import stats_schema


def parse_address(text: str) -> str | tuple[str, int]:
    """``HOST:PORT`` is TCP unless a file of that name exists; anything else is a path."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and not os.path.exists(text):
        return (host.strip("[]"), int(port))
    return text


class StatsClient:
    """``async with StatsClient(address) as c: await c.query_stats(...)``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._qmp = QMPClient("vmstats")
        self.version: dict[str, Any] = {}

    async def __aenter__(self) -> StatsClient:
        try:
            await self._qmp.connect(parse_address(self.address))
        except ConnectError as exc:
            cause = exc.exc if getattr(exc, "exc", None) else exc
            raise ClientError(f"cannot connect to QMP at {self.address}: {cause}") from exc
        greeting = self._qmp.greeting
        self.version = dict(greeting.QMP.version) if greeting is not None else {}
        commands = {c["name"] for c in await self._execute("query-commands")}
        if "query-stats" not in commands:
            qemu = self.version.get("qemu", {})
            found = f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')}"
            raise ClientError(
                f"QEMU {found} at {self.address} has no query-stats: it needs QEMU 7.1 or newer"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._qmp.disconnect()

    async def _execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self._qmp.execute(command, arguments)
        except ExecuteError as exc:
            info = exc.error.error
            raise ClientError(f"{command}: {info.class_}: {info.desc}") from exc
        except QMPError as exc:
            raise ClientError(f"{command}: connection failed: {exc}") from exc

    async def raw(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """The ``return`` value as received (key order kept)."""
        return await self._execute(command, arguments)

    @staticmethod
    def stats_arguments(filter: StatsFilter) -> dict[str, Any]:
        arguments: dict[str, Any] = {"target": filter.target.value}
        if filter.providers is not None:
            arguments["providers"] = [
                {
                    "provider": r.provider.value,
                    **({"names": list(r.names)} if r.names is not None else {}),
                }
                for r in filter.providers
            ]
        if filter.vcpus is not None:
            arguments["vcpus"] = list(filter.vcpus)
        return arguments

    @staticmethod
    def decode(type_name: str, value: Any) -> Any:
        try:
            return visit(stats_schema((8, 0)), type_name, value)
        except QapiError as exc:
            raise ClientError(f"malformed reply: {exc.desc}") from exc

    async def query_stats(self, filter: StatsFilter) -> list[StatsResult]:
        reply = await self._execute("query-stats", self.stats_arguments(filter))
        result: list[StatsResult] = self.decode("[StatsResult]", reply)
        return result

    async def query_stats_schemas(self, provider: StatsProvider | None = None) -> list[StatsSchema]:
        arguments = {"provider": provider.value} if provider is not None else None
        reply = await self._execute("query-stats-schemas", arguments)
        result: list[StatsSchema] = self.decode("[StatsSchema]", reply)
        return result

    async def hmp(self, command_line: str) -> str:
        reply = await self._execute("human-monitor-command", {"command-line": command_line})
        return str(reply)


def make_filter(
    target: str,
    provider: str | None = None,
    names: Sequence[str] | None = None,
    vcpus: Sequence[str] | None = None,
) -> StatsFilter:
    """A filter from command-line pieces; a provider is implied (kvm) when names are given."""
    providers = None
    if provider is not None or names is not None:
        providers = [StatsRequest(StatsProvider(provider or "kvm"), names)]
    return StatsFilter(StatsTarget(target), providers, vcpus)
