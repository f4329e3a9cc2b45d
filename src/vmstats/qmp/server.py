"""QMP over sockets: asyncio transports around :class:`QMPSession`.

Unix sockets are created with mode 0600 (only the owner may connect) and TCP binds to
loopback unless told otherwise: the stats are read-only, but who reads them is still the
operator's call.  Each connection is its own task; a client that stops reading its
replies is disconnected after ``write_timeout`` instead of holding memory or other
clients hostage, and one message is limited in size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import MAX_MESSAGE_SIZE, QMPSession

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
WRITE_BUFFER_HIGH = 1 << 20


class QMPServer:
    """Serves one :class:`Monitor` on any number of unix and TCP listeners."""

    def __init__(
        self,
        monitor: Monitor,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        write_timeout: float = 30.0,
    ) -> None:
        self.monitor = monitor
        self.max_message_size = max_message_size
        self.write_timeout = write_timeout
        self._servers: list[asyncio.Server] = []
        self._paths: list[Path] = []
        self._clients: set[asyncio.Task[None]] = set()

    async def start_unix(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        """Listen on a unix socket at ``path`` (a stale socket there is replaced)."""
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        server = await asyncio.start_unix_server(self._client, sock=sock)
        self._servers.append(server)
        self._paths.append(path)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 4444) -> int:
        """Listen on TCP; returns the port (useful with ``port=0``)."""
        server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        session = QMPSession(self.monitor, max_message_size=self.max_message_size)
        try:
            await self._send(writer, [session.greeting()])
            while data := await reader.read(READ_CHUNK):
                await self._send(writer, session.receive_data(data))
            session.receive_eof()
        except (ConnectionError, TimeoutError) as exc:
            log.info("QMP client dropped: %s", exc or type(exc).__name__)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, replies: list[bytes]) -> None:
        if not replies:
            return
        writer.write(b"".join(replies))
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._clients):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._servers.clear()
        self._paths.clear()
