"""A QMP conversation whose replies are wanted as the server wrote them, byte for byte.

``vmstats query --json`` prints "the reply as QMP sent it", and the host daemon passes a
QEMU's replies on to its own clients unchanged.  qemu.qmp (our client everywhere else)
parses every reply and gives no bytes back, so passing on what was sent meant decoding
and encoding again: for 256 vCPUs 12 ms of ``json.loads`` and 15 ms of encoding, ten times
what the server spends.  :class:`RawSession` reads each reply line and cuts the value out
of it (QEMU writes ``{"return": VALUE}`` for a request without ``id``).

Every step (connect, greeting, each reply) is bounded by a timeout: a QEMU monitor serves
one client at a time and leaves the others waiting in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from vmstats.errors import ClientError, RemoteError
from vmstats.qmp.client import DEFAULT_TIMEOUT, connect_address, no_query_stats

_RETURN = b'{"return": '
_END = b"}\r\n"
_LINE_LIMIT = 64 << 20  # QEMU's own limit of a message
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


class RawSession:
    """One negotiated QMP connection: ``async with RawSession(address) as qmp: await
    qmp.execute(...)``.  Errors are :class:`ClientError`; an error reply is
    :class:`RemoteError` with the server's class and text."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.version: dict[str, Any] = {}  # the greeting's

    async def __aenter__(self) -> RawSession:
        target = connect_address(self.address)
        try:
            if isinstance(target, tuple):
                opening = asyncio.open_connection(*target, limit=_LINE_LIMIT)
            else:
                opening = asyncio.open_unix_connection(target, limit=_LINE_LIMIT)
            self._reader, self._writer = await asyncio.wait_for(opening, self.timeout)
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot connect to QMP at {self.address}: {exc}") from exc
        try:
            greeting = await self._line()
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                self.version = dict(json.loads(greeting)["QMP"]["version"])
            await self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def peer_pid(self) -> int | None:
        """The pid of the process serving a unix socket (``SO_PEERCRED``), else None."""
        sock = self._writer.get_extra_info("socket") if self._writer else None
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        pid, _, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        return int(pid) or None

    async def stats_commands(self) -> set[str]:
        """The server's commands; :class:`ClientError` if it has no ``query-stats`` (QEMU
        before 7.1) or its reply is no command list."""
        try:
            commands = {str(c["name"]) for c in await self.value("query-commands")}
        except (TypeError, KeyError):
            raise ClientError(f"malformed query-commands reply from {self.address}") from None
        if "query-stats" not in commands:
            raise no_query_stats(self.version, self.address)
        return commands

    async def value(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """``command``'s return value, decoded."""
        try:
            return json.loads(await self.execute(command, arguments))
        except ValueError:
            raise ClientError(f"{command}: malformed reply from {self.address}") from None

    async def execute_all(self, requests: Sequence[tuple[str, dict[str, Any] | None]]
                          ) -> list[bytes]:  # fmt: skip
        """The return values of several commands, as the server wrote them.

        The requests go out in one write and the replies are read in order (QMP answers
        a connection's requests one after the other): a refresh of ``top`` asks each VM
        for both targets, and a wake-up of the server costs more than its work.  Every
        reply is read before an error is raised, so the connection stays in step."""
        assert self._writer is not None, "not connected"
        self._writer.write(b"".join(map(_request, requests)))
        replies: list[bytes] = []
        failure: ClientError | None = None
        for command, _ in requests:
            try:
                replies.append(await self._reply(command))
            except RemoteError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return replies

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> bytes:
        """``command``'s return value as the bytes the server wrote."""
        assert self._writer is not None, "not connected"
        self._writer.write(_request((command, arguments)))
        return await self._reply(command)

    async def _reply(self, command: str) -> bytes:
        """The return value of the next reply (events skipped), for ``command``."""
        while True:
            line = await self._line()
            if line.startswith(_RETURN) and line.endswith(_END):
                return line[len(_RETURN) : -len(_END)]
            try:
                message = json.loads(line)
            except ValueError:
                raise ClientError(f"{command}: malformed reply from {self.address}") from None
            if isinstance(message, dict) and "event" in message:
                continue
            error = message.get("error") if isinstance(message, dict) else None
            if isinstance(error, dict):
                raise RemoteError(str(error.get("class")), str(error.get("desc")), command)
            raise ClientError(f"{command}: malformed reply from {self.address}")

    async def _line(self) -> bytes:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
        except TimeoutError:
            raise ClientError(
                f"no answer from {self.address} within {self.timeout:g} s: is another "
                "client connected? (QEMU's monitor serves one client at a time)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"QMP connection to {self.address} failed: {exc}") from exc
        if not line:
            raise ClientError(f"QMP connection to {self.address} closed")
        return line


def _request(request: tuple[str, dict[str, Any] | None]) -> bytes:
    command, arguments = request
    message: dict[str, Any] = {"execute": command}
    if arguments is not None:
        message["arguments"] = arguments
    return json.dumps(message).encode()


async def execute_raw(
    address: str,
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """One command on a connection of its own: its return value as the server wrote it."""
    async with RawSession(address, timeout) as qmp:
        return await qmp.execute(command, arguments)
