"""One QMP command whose ``return`` value is wanted as the server wrote it, byte for byte.

``vmstats query --json`` prints "the reply as QMP sent it".  qemu.qmp (our client
everywhere else) parses every reply and gives no bytes back, so printing what was sent
meant decoding and encoding again: for 256 vCPUs 12 ms of ``json.loads`` and 15 ms of
encoding, ten times what the server spends.  This connection reads the reply line and
cuts the value out of it (QEMU writes ``{"return": VALUE}`` for a request without ``id``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from vmstats.errors import ClientError
from vmstats.qmp.client import DEFAULT_TIMEOUT, parse_address

_RETURN = b'{"return": '
_END = b"}\r\n"
_LINE_LIMIT = 64 << 20  # QEMU's own limit of a message


async def execute_raw(
    address: str,
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """``command``'s return value as the bytes the server wrote; :class:`ClientError` on
    an error reply, a silent server (``timeout`` per step) or a line that is no reply."""
    target = parse_address(address)
    try:
        if isinstance(target, tuple):
            opening = asyncio.open_connection(*target, limit=_LINE_LIMIT)
        else:
            opening = asyncio.open_unix_connection(target, limit=_LINE_LIMIT)
        reader, writer = await asyncio.wait_for(opening, timeout)
    except (OSError, TimeoutError) as exc:
        raise ClientError(f"cannot connect to QMP at {address}: {exc}") from exc
    try:
        await _line(reader, timeout, address)  # the greeting
        writer.write(b'{"execute": "qmp_capabilities"}')
        await _reply(reader, timeout, address, "qmp_capabilities")
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        writer.write(json.dumps(request).encode())
        return await _reply(reader, timeout, address, command)
    finally:
        writer.close()


async def _line(reader: asyncio.StreamReader, timeout: float, address: str) -> bytes:
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise ClientError(
            f"no answer from {address} within {timeout:g} s: is another "
            "client connected? (QEMU's monitor serves one client at a time)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"QMP connection to {address} failed: {exc}") from exc
    if not line:
        raise ClientError(f"QMP connection to {address} closed")
    return line


async def _reply(reader: asyncio.StreamReader, timeout: float, address: str,
                 command: str) -> bytes:  # fmt: skip
    """The value of the next reply (events are skipped)."""
    while True:
        line = await _line(reader, timeout, address)
        if line.startswith(_RETURN) and line.endswith(_END):
            return line[len(_RETURN) : -len(_END)]
        try:
            message = json.loads(line)
        except ValueError:
            raise ClientError(f"{command}: malformed reply from {address}") from None
        if isinstance(message, dict) and "event" in message:
            continue
        error = message.get("error") if isinstance(message, dict) else None
        if isinstance(error, dict):
            raise ClientError(f"{command}: {error.get('class')}: {error.get('desc')}")
        raise ClientError(f"{command}: malformed reply from {address}")
