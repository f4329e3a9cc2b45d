"""A read-only libvirt connection: which domains run, when that changes, and their stats.

libvirt owns each domain's QMP monitor, and using it (``qemu-monitor-command``, or a second
``-qmp``) marks the domain *tainted*.  A read-only connection may list domains, receive
their lifecycle events and call ``virConnectGetAllDomainStats``, which is all the daemon
needs: nothing here taints a domain or changes anything.

Events arrive through libvirt-python's asyncio event loop integration (``libvirtaio``), on
the daemon's loop.  Calls into libvirt block, so they run in a worker thread, each bounded
by a timeout.  When libvirtd goes away (restarted, upgraded), the connection's close
callback fires: the domains stay served from what does not need libvirt, and the
connection is opened again, with growing pauses, until libvirtd is back; then the owner is
told to resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmstats.errors import LibvirtError

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"

try:  # an optional extra: vmstats[libvirt]
    import libvirt
    import libvirtaio
except ImportError:  # pragma: no cover - depends on the machine
    libvirt = None
    libvirtaio = None

#: libvirt's own event numbers, to say in the log what happened.
_LIFECYCLE = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
              "shut down", "PM-suspended", "crashed")  # fmt: skip


def libvirt_unavailable_reason() -> str | None:
    """Why this process cannot talk to libvirt, or None."""
    if libvirt is None:
        return ("libvirt's Python binding is not installed (pip install 'vmstats[libvirt]'; "
                "it builds against libvirt-dev and pkg-config)")  # fmt: skip
    return None


@dataclass(frozen=True)
class Domain:
    """A running domain, as libvirt names it."""

    name: str
    uuid: str
    handle: Any  # the libvirt.virDomain, to ask for its stats


class LibvirtHost:
    """A read-only connection to ``uri`` that stays open across libvirtd restarts.

    ``changed`` is called (on the event loop) whenever the set of running domains may have
    changed: a lifecycle event, a reconnection.  ``timeout`` bounds every call.
    """

    def __init__(self, uri: str, changed: Callable[[str], None], timeout: float) -> None:
        reason = libvirt_unavailable_reason()
        if reason is not None:
            raise LibvirtError(reason)
        self.uri = uri
        self.timeout = timeout
        self._changed = changed
        self._conn: Any = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it is used from

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self, *, wait: bool = True) -> None:
        """Connect now.  If libvirtd does not answer (yet: a daemon may start before it)
        and ``wait``, keep trying in the background, saying so; any other failure (a URI
        libvirt rejects, no permission) raises :class:`LibvirtError`: no retry mends it."""
        _register_event_loop()
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except LibvirtError as exc:
            if not wait or not _unreachable(exc):
                raise
            log.warning("%s; trying again in the background", exc)
            self._start_reconnecting()

    async def _connect(self) -> None:
        conn = await self._call(libvirt.openReadOnly, self.uri)
        try:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._lifecycle, None)  # fmt: skip
            conn.registerCloseCallback(self._closed, None)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise LibvirtError(f"libvirt at {self.uri}: {exc}") from exc
        self._conn = conn
        log.info("libvirt at %s: connected (read-only)", self.uri)
        self._changed("connected")

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        what = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else f"event {event}"
        self._changed(f"{dom.name()} {what}")

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        """libvirtd went away (or the connection broke): reconnect, then resync.  libvirt
        says it from its event loop, or from the thread whose call found the connection
        broken (a worker of :meth:`_call`, when the loop had not seen it yet): handed to
        the loop then (from a worker it made no reconnection, and reads failed for ever)."""
        if self._loop is None:
            return
        if not _running(self._loop):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to mend
                self._loop.call_soon_threadsafe(self._closed, conn, reason, opaque)
            return
        if self._conn is not conn or self._closing:
            return
        self._conn = None
        log.warning("libvirt at %s: connection lost; reconnecting", self.uri)
        self._start_reconnecting()
        self._changed("disconnected")

    def _start_reconnecting(self) -> None:
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnecting())

    async def _reconnecting(self) -> None:
        pause = 0.2
        while not self._closing:
            await asyncio.sleep(pause)
            try:
                await self._connect()
                return
            except LibvirtError:
                pause = min(pause * 2, 5.0)

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a worker thread, within the timeout; libvirt's errors
        and a libvirtd that does not answer as :class:`LibvirtError`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(function, *args)
        except TimeoutError:
            raise LibvirtError(f"libvirt at {self.uri} did not answer within "
                               f"{self.timeout:g} s") from None  # fmt: skip
        except libvirt.libvirtError as exc:
            await self._drop_if_dead()
            raise LibvirtError(f"libvirt at {self.uri}: {exc.get_error_message()}") from exc

    async def _drop_if_dead(self) -> None:
        """A call failed: if the connection is dead, reconnect, as if its close had been
        said.  That is libvirt's event loop's to say, and a close it missed (or said
        late) must not leave every read failing on a dead connection until a restart."""
        conn = self._conn
        if conn is None or self._closing:
            return
        try:
            async with asyncio.timeout(self.timeout):
                alive = await asyncio.to_thread(conn.isAlive)
        except (TimeoutError, libvirt.libvirtError):
            alive = 0
        if not alive:
            self._closed(conn, 0, None)

    def _connection(self) -> Any:
        if self._conn is None:
            raise LibvirtError(f"libvirt at {self.uri} is not reachable (reconnecting)")
        return self._conn

    async def domains(self) -> list[Domain]:
        """The domains running now."""
        conn = self._connection()
        handles = await self._call(conn.listAllDomains,
                                   libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)  # fmt: skip
        return [Domain(d.name(), d.UUIDString(), d) for d in handles]

    async def stats(self, domain: Domain, *, vcpus: bool) -> dict[str, object]:
        """One read of the domain's VM stats group (it kicks no vCPU), or of its vCPU
        group when ``vcpus`` (a QEMU 7.x then kicks every vCPU)."""
        conn = self._connection()
        if vcpus:
            groups = libvirt.VIR_DOMAIN_STATS_VCPU
        elif (groups := getattr(libvirt, "VIR_DOMAIN_STATS_VM", 0)) == 0:
            raise LibvirtError("this libvirt has no VM stats group (it came with 8.9)")
        found = await self._call(conn.domainListGetStats, [domain.handle], groups)
        if not found:
            raise LibvirtError(f"libvirt gave no stats for {domain.name} (is it still running?)")
        return dict(found[0][1])

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


_registered: asyncio.AbstractEventLoop | None = None


def _unreachable(exc: LibvirtError) -> bool:
    """Did libvirtd not answer (its socket missing or refused, or silent), as opposed to
    refusing what was asked?"""
    cause = exc.__cause__
    if not isinstance(cause, libvirt.libvirtError):
        return True  # the timeout: a silent libvirtd
    return bool(cause.get_error_domain() == libvirt.VIR_FROM_RPC)


def _ignore_error(context: object, error: object) -> None:
    """libvirt's errors come back as exceptions: nothing to print here."""


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Is this thread running ``loop`` now?"""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop in this thread
        return False


def _register_event_loop() -> None:
    """libvirt's events on this process's running loop (once: libvirt keeps one
    implementation per process)."""
    global _registered
    loop = asyncio.get_running_loop()
    if _registered is None:
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        # libvirt prints every error on stderr by default, a line per failed reconnect;
        # its errors reach us as exceptions, and are logged (rate-limited) where it matters.
        libvirt.registerErrorHandler(_ignore_error, None)
        _registered = loop
    elif _registered is not loop:
        raise LibvirtError("libvirt's events are bound to another event loop of this process")
