"""A stats client for any QMP socket, real QEMU or vmstats, built on ``qemu.qmp``.

Replies are decoded into the stats model with the same visitor that checks our server's
input, so a malformed reply is an error that says what is wrong, not a KeyError later.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, Message, QMPClient, QMPError

from vmstats.errors import ClientError
from vmstats.qmp.machine import cpu_paths
from vmstats.stats.decode import results_from_wire, schemas_from_wire
from vmstats.stats.model import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
)
from vmstats.stats.order import natural_qom_paths


def parse_address(text: str) -> str | tuple[str, int]:
    """``HOST:PORT`` is TCP unless a file of that name exists; anything else is a path."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and not os.path.exists(text):
        return (host.strip("[]"), int(port))
    return text


def address_name(address: str) -> str:
    """A VM's name from its socket's address: the daemon's sockets are ``RUN_DIR/NAME.qmp``."""
    return Path(address).stem if "/" in address else address


log = logging.getLogger(__name__)


def connect_address(address: str) -> str | tuple[str, int]:
    """:func:`parse_address`, refusing a port no socket can have (:class:`ClientError`)."""
    target = parse_address(address)
    if isinstance(target, tuple) and not 0 < target[1] < 65536:
        raise ClientError(f"cannot connect to QMP at {address}: port {target[1]} "
                          "is not between 1 and 65535")  # fmt: skip
    return target


def qemu_version(version: Any) -> str | None:
    """``major.minor.micro`` of a version object (a greeting's or ``query-version``'s), or
    None if it is not one."""
    try:
        qemu = version["qemu"]
        return f"{int(qemu['major'])}.{int(qemu['minor'])}.{int(qemu['micro'])}"
    except (KeyError, TypeError, ValueError):
        return None


def no_query_stats(version: Any, address: str) -> ClientError:
    """The error for a server without ``query-stats`` (``version``: the greeting's)."""
    found = qemu_version(version) or "(version unknown)"
    return ClientError(f"QEMU {found} at {address} has no query-stats: it needs QEMU 7.1 or newer")


def stats_arguments(filter: StatsFilter) -> dict[str, Any]:
    """``query-stats`` arguments for a checked filter (what a client sends, and what the
    host daemon forwards to a QEMU)."""
    arguments: dict[str, Any] = {"target": filter.target.value}
    if filter.providers is not None:
        arguments["providers"] = [
            {"provider": r.provider.value, **({} if r.names is None else {"names": list(r.names)})}
            for r in filter.providers
        ]
    if filter.vcpus is not None:
        arguments["vcpus"] = list(filter.vcpus)
    return arguments


class _QMPClient(QMPClient):
    """qemu.qmp's client, logging messages lazily.

    Its message hooks (documented as meant for subclasses) format every message with
    ``str()`` before calling ``logger.debug``, even with debug logging off: an indented
    pure-Python JSON dump of each reply, more than half of a ``top`` refresh's time.
    """

    def _cb_outbound(self, msg: Message) -> Message:
        self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        self.logger.debug("<-- %s", msg)
        return msg


#: Seconds to wait for a connection, a greeting or a reply.
DEFAULT_TIMEOUT = 5.0


class StatsClient:
    """``async with StatsClient(address) as c: await c.query_stats(...)``.

    Every step (connect, greeting and negotiation, each reply) is bounded by ``timeout``:
    a QEMU whose monitor already has a client accepts the connection but sends no
    greeting until that client leaves, and that is said in the error.
    """

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._qmp = _QMPClient("vmstats")
        self.version: dict[str, Any] = {}
        self.commands: set[str] = set()

    async def __aenter__(self) -> StatsClient:
        await self.connect()
        return self

    async def connect(self) -> None:
        """Connect, negotiate, and check that the server has ``query-stats``."""
        address = connect_address(self.address)
        try:
            await asyncio.wait_for(self._qmp.connect(address), self.timeout)
        except ConnectError as exc:
            cause = exc.exc if getattr(exc, "exc", None) else exc
            raise ClientError(f"cannot connect to QMP at {self.address}: {cause}") from exc
        except TimeoutError:
            await self.close()
            raise ClientError(
                f"no QMP greeting from {self.address} within {self.timeout:g} s: is another "
                "client connected? (QEMU's monitor serves one client at a time)"
            ) from None
        greeting = self._qmp.greeting
        self.version = dict(greeting.QMP.version) if greeting is not None else {}
        self.commands = {c["name"] for c in await self._execute("query-commands")}
        commands = self.commands
        if "query-stats" not in commands:
            raise no_query_stats(self.version, self.address)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect.  Never fails: qemu.qmp re-raises here whatever ended the
        connection (an EOFError when the server went first), which is no news."""
        try:
            await asyncio.wait_for(self._qmp.disconnect(), self.timeout)
        except Exception as exc:  # noqa: BLE001 -- closing never fails (see above)
            log.debug("QMP disconnect from %s: %r", self.address, exc)

    async def _execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await asyncio.wait_for(self._qmp.execute(command, arguments), self.timeout)
        except TimeoutError:
            raise ClientError(
                f"{command}: no reply from {self.address} within {self.timeout:g} s"
            ) from None
        except ExecuteError as exc:
            info = exc.error.error
            raise ClientError(f"{command}: {info.class_}: {info.desc}") from exc
        except QMPError as exc:
            raise ClientError(f"{command}: connection failed: {exc}") from exc

    async def query_stats(self, filter: StatsFilter) -> list[StatsResult]:
        """``query-stats``, results in QEMU's (wire) order."""
        return results_from_wire(await self._execute("query-stats", stats_arguments(filter)))

    async def query_stats_schemas(self, provider: StatsProvider | None = None) -> list[StatsSchema]:
        arguments = {"provider": provider.value} if provider is not None else None
        return schemas_from_wire(await self._execute("query-stats-schemas", arguments))

    async def query_cpus(self) -> list[str]:
        """QOM paths of the vCPUs by CPU index: ``query-cpus-fast`` where the server has
        it (QEMU: paths are not contiguous), else the order of the vCPU stats."""
        if "query-cpus-fast" in self.commands:
            return cpu_paths(await self._execute("query-cpus-fast"), self.address)
        return natural_qom_paths(await self.query_stats(StatsFilter(StatsTarget.VCPU)))

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
