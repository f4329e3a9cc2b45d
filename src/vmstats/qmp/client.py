"""The QMP client: every vmstats tool that talks to a QMP socket (a QEMU's or ours) uses it.

The client commands, ``top``, the exporter, the host daemon's probe and its forwarding to a
QEMU all need the same things: connect with a deadline, negotiate, send commands (several
in one write when a refresh needs several), and have each return value as the bytes the
server wrote.  Bytes, because ``vmstats query --json`` prints "the reply as QMP sent it",
the daemon passes a QEMU's replies on unchanged, and the stats are decoded straight from
them (:mod:`vmstats.stats.decode`); ``json.loads`` of a 256-vCPU reply costs ten times
what the server spends on it.

Any valid QMP reply is taken.  QEMU writes ``{"return": VALUE}\\r\\n`` for a request
without ``id``; that form is cut without decoding.  Anything else (other spacing, other
line ends, members in another order) is parsed as a JSON object whose members are kept
as raw bytes (msgspec, in C), so the value is still exactly what was sent.

Every step (connect, greeting, each reply) is bounded by a timeout: a QEMU monitor serves
one client at a time and leaves the others waiting in silence, which the error says.
qemu.qmp, the stock client, is used in the tests to prove that it works against our
server; it is not used here, since it returns no bytes.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from vmstats.errors import ClientError, NoAnswer, RemoteError, os_reason
from vmstats.qmp.machine import cpu_paths
from vmstats.stats.decode import results_from_wire, schemas_from_wire
from vmstats.stats.model import (
    EXTENSION_PROVIDERS,
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
)
from vmstats.stats.order import natural_qom_paths

#: Seconds to wait for a connection, a greeting or a reply.
DEFAULT_TIMEOUT = 5.0

_RETURN = b'{"return": '
_END = b"}\r\n"
LINE_LIMIT = 64 << 20  # QEMU's own limit of a message
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
_MESSAGE = msgspec.json.Decoder(dict[str, msgspec.Raw])
_JSON = msgspec.json.Decoder()

#: A command and its arguments (None: none sent).
Request = tuple[str, dict[str, Any] | None]


def parse_address(text: str) -> str | tuple[str, int]:
    """``HOST:PORT`` is TCP unless a file of that name exists; anything else is a path."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and not os.path.exists(text):
        return (host.strip("[]"), int(port))
    return text


def address_name(address: str) -> str:
    """A VM's name from its socket's address: the daemon's sockets are ``RUN_DIR/NAME.qmp``."""
    return Path(address).stem if "/" in address else address


def connect_address(address: str) -> str | tuple[str, int]:
    """:func:`parse_address`, refusing what no QMP server can be at (:class:`ClientError`):
    a port out of range, a path that is not a socket."""
    target = parse_address(address)
    if isinstance(target, tuple):
        if not 0 < target[1] < 65536:
            raise ClientError(f"cannot connect to QMP at {address}: port {target[1]} "
                              "is not between 1 and 65535")  # fmt: skip
        return target
    try:
        mode = os.stat(target).st_mode
    except OSError as exc:
        raise ClientError(f"cannot connect to QMP at {address}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ClientError(f"cannot connect to QMP at {address}: {_kind(mode)}, not a socket")
    return target


def _kind(mode: int) -> str:
    """What a path that is not a socket is, in a few words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a file"


def is_vmstats(greeting: dict[str, Any]) -> bool:
    """Does a greeting come from one of vmstats' servers, not a QEMU?"""
    return str(greeting.get("package", "")).startswith("vmstats")


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


def busy(address: str, timeout: float) -> NoAnswer:
    """The error for a server that accepted us and then said nothing: what a QEMU monitor
    does while another client holds it."""
    return NoAnswer(f"no answer from {address} within {timeout:g} s: is another client "
                       "connected? (QEMU's monitor serves one client at a time)")  # fmt: skip


def connection_failed(address: str, timeout: float, exc: OSError | None = None) -> ClientError:
    """The error for a connection that failed (``exc``) or was closed while its replies
    were awaited."""
    if exc is None:
        return ClientError(f"QMP connection to {address} closed")
    if exc.errno == errno.EINVAL:  # QEMU 7.x's monitor, held, after a try timed out
        return busy(address, timeout)
    return ClientError(f"QMP connection to {address} failed: {exc}")


def line_too_long(address: str) -> ClientError:
    """The error for a server that sent a line over QEMU's own limit of a message."""
    return ClientError(f"{address} sent a line longer than QEMU's {LINE_LIMIT >> 20} MiB "
                       "limit of a message")  # fmt: skip


def peer_pid(sock: Any) -> int | None:
    """The pid of the process serving a unix socket (``SO_PEERCRED``), else None."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(pid) or None


def greeting_of(line: bytes, address: str) -> dict[str, Any]:
    """The version a greeting gives; an error line (a server over its connection cap)
    or anything else is a :class:`ClientError` saying so."""
    try:
        message = _JSON.decode(line)
    except msgspec.DecodeError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        raise ClientError(f"{address} refused the connection: "
                          f"{message['error'].get('desc')}")  # fmt: skip
    try:
        return dict(message["QMP"]["version"])
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"{address} is not a QMP server: it said "
                          f"{line[:80]!r}") from None  # fmt: skip


async def open_transport(
    address: str, timeout: float, protocol: Callable[[], asyncio.Protocol]
) -> asyncio.Transport:
    """A connection to the QMP server at ``address`` (unix path or ``HOST:PORT``) within
    ``timeout``, run by ``protocol``; :class:`ClientError` saying why not."""
    target = connect_address(address)
    loop = asyncio.get_running_loop()
    try:
        if isinstance(target, tuple):
            opening = loop.create_connection(protocol, *target)
        else:
            opening = loop.create_unix_connection(protocol, target)
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
        # (Ctrl-C) that comes as the connection completes, and the client then waits
        # its whole timeout for a greeting (seen: 3 runs in 8 of a test)
        async with asyncio.timeout(timeout):
            transport, _ = await opening
    except TimeoutError:
        raise ClientError(f"cannot connect to QMP at {address}: "
                          f"no connection within {timeout:g} s") from None  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # a listener's backlog full: a held QEMU monitor
            raise busy(address, timeout) from None
        raise ClientError(f"cannot connect to QMP at {address}: {os_reason(exc)}") from None
    assert isinstance(transport, asyncio.Transport)
    return transport


class QmpClient:
    """One negotiated QMP connection: ``async with QmpClient(address) as qmp: await
    qmp.execute(...)``.  Errors are :class:`ClientError`; an error reply is
    :class:`RemoteError` with the server's class and text.

    ``negotiate=False`` leaves ``qmp_capabilities`` to the caller, who may send it in one
    write with its commands (a reader that connects for every read saves a round trip)."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT,
                 negotiate: bool = True) -> None:  # fmt: skip
        self.address = address
        self.timeout = timeout
        self.negotiate = negotiate
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.version: dict[str, Any] = {}  # the greeting's
        self._commands: set[str] | None = None

    async def __aenter__(self) -> QmpClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def connect(self) -> None:
        """Connect, read the greeting and negotiate; closed again if any step fails."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await open_transport(self.address, self.timeout, lambda: protocol)
        self._reader, self._writer = reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            self.version = greeting_of(await self._line(), self.address)
            if self.negotiate:
                await self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def peer_pid(self) -> int | None:
        """The pid of the process serving a unix socket (``SO_PEERCRED``), else None."""
        return peer_pid(self._writer.get_extra_info("socket") if self._writer else None)

    # -- commands, as bytes -----------------------------------------------------------

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> bytes:
        """``command``'s return value as the bytes the server wrote."""
        (reply,) = await self.execute_all([(command, arguments)])
        return reply

    async def execute_all(self, requests: Sequence[Request]) -> list[bytes]:
        """The return values of several commands, as the server wrote them; the first
        error reply is raised once every reply is read (:meth:`execute_each`)."""
        outcomes = await self.execute_each(requests)
        for outcome in outcomes:
            if isinstance(outcome, RemoteError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    async def execute_each(self, requests: Sequence[Request]) -> list[bytes | RemoteError]:
        """Each command's return value as the server wrote it, or the error it answered.

        The requests go out in one write and the replies are read in order (QMP answers
        a connection's requests one after the other): a refresh asks each VM several
        things, and a wake-up of the server costs more than its work.  Every reply is
        read, so the connection stays in step."""
        if self._writer is None:
            raise ClientError(f"not connected to {self.address}")
        self._writer.write(request_bytes(requests))
        outcomes: list[bytes | RemoteError] = []
        try:  # one deadline for the replies of one write (a timer per line costs a refresh
            async with asyncio.timeout(self.timeout):  # of many VMs more than its reads)
                for command, _ in requests:
                    try:
                        outcomes.append(await self._reply(command, timed=False))
                    except RemoteError as exc:
                        outcomes.append(exc)
        except TimeoutError:
            raise busy(self.address, self.timeout) from None
        return outcomes

    async def value(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """``command``'s return value, decoded."""
        return decode(await self.execute(command, arguments), command)

    async def _reply(self, command: str, timed: bool = True) -> bytes:
        """The return value of the next reply (events skipped), for ``command``; within
        the timeout, unless the caller keeps one (``timed=False``)."""
        while True:
            line = await self._line() if timed else await self._untimed_line()
            outcome = reply_of(line, command, self.address)
            if isinstance(outcome, RemoteError):
                raise outcome
            if outcome is not None:
                return outcome

    async def _line(self) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._untimed_line()
        except TimeoutError:
            raise busy(self.address, self.timeout) from None

    async def _untimed_line(self) -> bytes:
        if self._reader is None:
            raise ClientError(f"not connected to {self.address}")
        try:
            line = await self._reader.readline()
        except OSError as exc:
            raise connection_failed(self.address, self.timeout, exc) from None
        except ValueError:  # a line over the limit (asyncio words it its own way)
            raise line_too_long(self.address) from None
        if not line:
            raise connection_failed(self.address, self.timeout)
        return line

    # -- stats, decoded ---------------------------------------------------------------

    async def commands(self) -> set[str]:
        """The server's commands (asked once per connection)."""
        if self._commands is None:
            try:
                self._commands = {str(c["name"]) for c in await self.value("query-commands")}
            except (TypeError, KeyError):
                raise ClientError(f"malformed query-commands reply from {self.address}") from None
        return self._commands

    async def stats_commands(self) -> set[str]:
        """:meth:`commands`; :class:`ClientError` if ``query-stats`` is not among them
        (QEMU before 7.1)."""
        commands = await self.commands()
        if "query-stats" not in commands:
            raise no_query_stats(self.version, self.address)
        return commands

    async def query_stats(self, filter: StatsFilter) -> list[StatsResult]:
        """``query-stats``, results in QEMU's (wire) order."""
        return results_from_wire(await self.execute("query-stats", stats_arguments(filter)))

    async def query_stats_schemas(self, provider: StatsProvider | None = None) -> list[StatsSchema]:
        arguments = {"provider": provider.value} if provider is not None else None
        return schemas_from_wire(await self.value("query-stats-schemas", arguments))

    @property
    def is_vmstats(self) -> bool:
        """Is the peer one of vmstats' servers (the greeting's package says so)?"""
        return is_vmstats(self.version)

    async def all_schemas(self) -> list[StatsSchema]:
        """Every provider's schemas: QEMU's, and where the server is vmstats', its own
        providers' too (asked by name: they are left out of a plain request)."""
        schemas = await self.query_stats_schemas()
        if self.is_vmstats:
            for provider in sorted(EXTENSION_PROVIDERS):
                schemas = await self.query_stats_schemas(provider) + schemas
        return schemas

    async def query_cpus(self) -> list[str]:
        """QOM paths of the vCPUs by CPU index: ``query-cpus-fast`` where the server has
        it (QEMU: paths are not contiguous), else the order of the vCPU stats."""
        if "query-cpus-fast" in await self.commands():
            return cpu_paths(await self.value("query-cpus-fast"), self.address)
        return natural_qom_paths(await self.query_stats(StatsFilter(StatsTarget.VCPU)))

    async def hmp(self, command_line: str) -> str:
        """An HMP command's output (``human-monitor-command``)."""
        reply = await self.value("human-monitor-command", {"command-line": command_line})
        if not isinstance(reply, str):
            raise ClientError(f"human-monitor-command: malformed reply from {self.address}")
        return reply


def reply_of(line: bytes, command: str, address: str) -> bytes | RemoteError | None:
    """What a line the server sent says to ``command``: its return value as the bytes
    the server wrote, the error it answered, or None for an event (to skip);
    :class:`ClientError` for anything else."""
    if line.startswith(_RETURN) and line.endswith(_END):  # QEMU's own form
        return line[len(_RETURN) : -len(_END)]
    try:
        members = _MESSAGE.decode(line)
    except msgspec.DecodeError:
        raise ClientError(f"{command}: malformed reply from {address}") from None
    if "return" in members:
        return bytes(members["return"])
    if "error" in members:
        error = decode(bytes(members["error"]), command)
        if isinstance(error, dict):
            return RemoteError(str(error.get("class")), str(error.get("desc")), command)
    if "event" not in members:
        raise ClientError(f"{command}: malformed reply from {address}")
    return None


def decode(raw: bytes, command: str) -> Any:
    """A return value's bytes as JSON; :class:`ClientError` naming ``command`` if they are
    not JSON."""
    try:
        return _JSON.decode(raw)
    except msgspec.DecodeError:
        raise ClientError(f"{command}: malformed reply") from None


def request_bytes(requests: Sequence[Request]) -> bytes:
    """Requests as one write."""
    return b"".join(map(_request, requests))


def _request(request: Request) -> bytes:
    command, arguments = request
    message: dict[str, Any] = {"execute": command}
    if arguments is not None:
        message["arguments"] = arguments
    return json.dumps(message).encode()
