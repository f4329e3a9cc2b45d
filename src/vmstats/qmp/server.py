"""QMP over sockets, fit to face many local clients at once: the listeners, accepting,
the count of clients and their timeouts here; each client's protocol around its
:class:`QMPSession` in :mod:`.connection`.

QEMU's monitor serves one client at a time; this server serves many, so no client may
exhaust, stall or crash it for the others.  What each connection may cost is bounded:

- **memory**: one read of input (reading pauses until it is parsed), one message in
  progress (bounded in bytes and tokens by the session's parser), and a write buffer of
  :data:`WRITE_HIGH` bytes plus the reply being written.  Replies are produced one at a
  time and production stops while the client does not read (backpressure per request);
- **time**: a connection gets at most :data:`TURN` seconds of work per turn of the event
  loop (the parser works in slices, replies one by one), then yields to the others;
- **patience**: a reply not taken within ``write_timeout`` aborts the connection (which
  frees its buffer at once); a message left half-sent for ``message_timeout`` and a
  connection idle for ``idle_timeout`` are closed;
- **count**: at most ``max_connections``, kept below the process's fd limit.  The one
  over the cap gets a QMP error line and is closed.  If ``accept()`` runs out of fds or
  memory anyway, accepting pauses for a second, and the log says so once a minute with a
  count, not once per try.

Sockets: unix sockets get mode 0600 unless told otherwise, a live server's socket is
never taken over (a stale one is replaced), and on close a path is removed only if it
is still the socket we created.  TCP binds to loopback unless told otherwise.  The listen
backlog is the system's maximum, so a burst of connects queues instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from vmstats import acl
from vmstats.errors import SocketInUse
from vmstats.limits import RateLimitedLog, ServerLimits, fd_budget, listen_backlog
from vmstats.qmp.connection import Connection
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import error_line

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64
ACCEPT_RETRY = 1.0
SWEEP = 1.0


def claim_socket_path(path: Path, timeout: float = 1.0) -> None:
    """Make ``path`` free for a new unix socket: remove a stale socket (nobody answers on
    it), refuse with :class:`SocketInUse` a live one or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale: its server is gone
        return
    except FileNotFoundError:
        return
    except OSError as exc:  # a full backlog or a server too busy to accept: alive
        raise SocketInUse(f"{path} is in use by a running server ({exc})") from exc
    finally:
        probe.close()
    raise SocketInUse(f"{path} is in use by a running server: stop it or choose another path")


#: A unix socket's path holds at most this many bytes (sun_path, less its NUL).
SUN_PATH_MAX = 107
#: How a socket made but not yet renamed into place is named (see ``start_unix``).
STAGING_PREFIX = ".new-"


def _staging_path(path: Path) -> str:
    """Where a socket for ``path`` is made before it is renamed there: beside it, under a
    random hidden name; ``path`` itself where that name would not fit in a socket's
    path (a short name in a long directory)."""
    staging = os.path.join(os.path.dirname(path), f"{STAGING_PREFIX}{secrets.token_hex(4)}")
    return staging if len(os.fsencode(staging)) <= SUN_PATH_MAX else str(path)


@dataclass
class _Listener:
    sock: socket.socket
    path: Path | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we created

    def remove_path(self) -> None:
        """Unlink our socket file, unless someone else's socket is there now."""
        if self.path is None or self.identity is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.identity:
                self.path.unlink()


class QMPServer:
    """Serves one :class:`Monitor` on any number of unix and TCP listeners."""

    def __init__(self, monitor: Monitor, limits: ServerLimits | None = None) -> None:
        self.monitor = monitor
        self.limits = limits or ServerLimits()
        self.max_connections = self.limits.max_connections
        self._listeners: list[_Listener] = []
        self._connections: set[Connection] = set()
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.log = RateLimitedLog(log)
        #: Asked about every unix connection before it is served: None lets it in, a
        #: reason refuses it (who may read is the daemon's business, not the protocol's).
        self.admit: Callable[[socket.socket], str | None] | None = None

    @property
    def connections(self) -> int:
        """Connections being served (or being set up)."""
        return len(self._connections) + self._starting

    # -- listeners ------------------------------------------------------------------

    async def start_unix(
        self,
        path: str | os.PathLike[str],
        mode: int = 0o600,
        group: int | None = None,
        owner: int | None = None,
        groups: Collection[int] = (),
    ) -> None:
        """Listen on a unix socket at ``path`` with ``mode`` (and ``group``, a gid, and
        ``owner``, a uid: the socket is theirs to connect to; ``groups``, more gids that
        may connect, by the socket's ACL, set while the socket is still ours).

        Raises :class:`SocketInUse` if a live server has the path, OSError if it cannot
        be created (a missing folder, no permission).
        """
        path = Path(path)
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            # refused as bind refuses it: renamed there, no client could connect by it
            raise OSError(f"AF_UNIX path too long ({SUN_PATH_MAX} bytes at most)")
        claim_socket_path(path)
        # made under a name of its own and renamed into place once it listens with its
        # modes, owner and groups: whoever sees the path appear (a watcher of the run
        # directory does) and connects at once is neither refused nor denied
        staging = _staging_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 & ~mode)
            try:
                sock.bind(staging)
            finally:
                os.umask(old_umask)
            try:
                sock.listen(listen_backlog())
                os.chmod(staging, mode)
                if groups:
                    self._grant(staging, path, mode, groups)
                if group is not None or owner is not None:
                    os.chown(staging, -1 if owner is None else owner,
                             -1 if group is None else group)  # fmt: skip
                if staging != str(path):
                    os.rename(staging, path)  # the path was just found free (or stale)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staging)
                raise
            st = os.lstat(path)
        except OSError:
            sock.close()
            raise
        self._listen(_Listener(sock, path, (st.st_dev, st.st_ino)))

    def _grant(self, file: str, path: Path, mode: int, groups: Collection[int]) -> None:
        """Let ``groups`` connect to ``file``, the socket that becomes ``path``."""
        try:
            acl.set_groups(file, mode, groups)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            self.log.warning("acl", "%s: this file system keeps no ACLs: groups %s cannot "
                             "connect", path, sorted(groups))  # fmt: skip

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 4444) -> int:
        """Listen on TCP; returns the port (useful with ``port=0``)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(listen_backlog())
        except OSError:
            sock.close()
            raise
        self._listen(_Listener(sock))
        return int(sock.getsockname()[1])

    def _listen(self, listener: _Listener) -> None:
        """Accept on ``listener``, a socket listening already."""
        listener.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        if not self._listeners:
            self.max_connections = min(self.limits.max_connections, fd_budget())
        self._listeners.append(listener)
        self._resume_accepting(listener)

    def _resume_accepting(self, listener: _Listener) -> None:
        if self._loop is not None and not self._closed and listener in self._listeners:
            self._loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _accept(self, listener: _Listener) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of fds or memory: pause instead of spinning on a ready listener.
                self._loop.remove_reader(listener.sock.fileno())
                self._loop.call_later(ACCEPT_RETRY, self._resume_accepting, listener)
                self.log.warning(
                    f"accept:{exc.errno}",
                    "cannot accept QMP connections (%s); paused for %.0f s",
                    os.strerror(exc.errno or errno.EIO),
                    ACCEPT_RETRY,
                )
                return
            conn.setblocking(False)
            if self.connections >= self.max_connections:
                self._reject(conn)
            elif self.admit is not None and listener.path is not None and (
                    refused := self.admit(conn)) is not None:  # fmt: skip
                self._refuse(conn, refused)
            else:
                self._adopt(conn)

    def _reject(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.send(
                error_line(
                    f"too many QMP connections: this server takes {self.max_connections} "
                    "at a time; try again later"
                )
            )
        conn.close()
        self.log.warning(
            "cap", "QMP connection refused: %d connections already (the limit)", self.connections
        )

    def _refuse(self, conn: socket.socket, why: str) -> None:
        """Not for this peer: one error line instead of a greeting, then the door."""
        with contextlib.suppress(OSError):
            conn.send(error_line(f"not allowed to read this VM: {why}"))
        conn.close()
        self.log.warning(f"refused:{why}", "QMP connection refused: %s", why)

    def _adopt(self, conn: socket.socket) -> None:
        assert self._loop is not None
        self._starting += 1
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        """Make a transport for an accepted socket.  It counts as "starting" until its
        protocol is connected, then as a connection: never both, or a burst of connects
        would be counted twice and refused below the cap."""
        assert self._loop is not None
        protocol = Connection(self)
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, sock=conn)
        except OSError as exc:
            conn.close()
            self.log.warning("adopt", "QMP connection failed at set-up: %s", exc)
        finally:
            if protocol.transport is None:  # connection_made never came
                self._starting -= 1

    def connection_made(self, connection: Connection) -> None:
        """A connection set up (counted as starting until now) is served."""
        self._starting -= 1
        self._connections.add(connection)
        if self._sweeper is None and self._loop is not None and not self._closed:
            self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    def connection_lost(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def _sweep(self) -> None:
        """Once a second while there are connections: close those idle or half-sent for
        too long.  A server nobody is connected to costs no timer (a host daemon has a
        server per VM, most of them unread)."""
        now = time.monotonic()
        for connection in list(self._connections):
            connection.check_timeouts(now)
        self._sweeper = None
        if self._connections and self._loop is not None and not self._closed:
            self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    # -- shutdown -------------------------------------------------------------------

    async def close(self, grace: float = 1.0) -> None:
        """Stop listening, remove our socket files, close every connection.

        Connections get ``grace`` seconds to take the replies already written, then are
        aborted.  Quiet: closing is not an error, for the server or its clients.
        """
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for listener in self._listeners:
            if self._loop is not None:
                self._loop.remove_reader(listener.sock.fileno())
            listener.sock.close()
            listener.remove_path()
        self._listeners.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in list(self._connections):
            connection.close()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            connection.abort()
