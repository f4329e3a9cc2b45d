"""Every error vmstats raises, in one tree.

Code below the protocol edge raises these and never formats a QMP error itself; the one
mapping to what a QMP client sees is :func:`vmstats.qapi.errors.qmp_error`, and the
command line turns them into one line on stderr.  Anything else that escapes is a bug: it
is logged with its traceback and a client sees only "internal error", never its text.

::

    VmstatsError
    ├── QapiError             a QMP error exactly as QEMU reports it (class and desc)
    │   ├── GenericError
    │   ├── CommandNotFound
    │   └── RemoteError       the error a QEMU we asked answered (also a ClientError)
    ├── StatsError            a provider cannot give stats; a client sees GenericError with
    │   │                     this text, which is QEMU's where QEMU has one
    │   ├── BinaryStatsError  a KVM stats file that cannot be read or is malformed
    │   ├── VmGone            the VM's process has exited: its stats are frozen, not served
    │   └── LibvirtError      libvirt cannot be reached, or did not give a domain's stats
    ├── KvmUnavailable        no usable /dev/kvm on this host (the text says why)
    ├── AttachError           another process's stats fds could not be listed or copied
    ├── RecordingError        a file that is not a vmstats recording, or cannot be read
    ├── GuestError            the demo guest stopped in a way it should not
    ├── SocketInUse           a server's socket path is taken by a live server (or no socket)
    └── ClientError           talking to a QMP server failed: unreachable, silent, refused
        │                     the request, or answered something malformed
        └── UsageError        the request names what the server does not serve (exit 2)
"""

from __future__ import annotations

import os


class VmstatsError(Exception):
    """The root: ``except VmstatsError`` catches every error vmstats means to raise."""


class QapiError(VmstatsError):
    """An error QEMU would report as ``{"error": {"class": ..., "desc": ...}}``."""

    error_class = "GenericError"

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc

    def to_qmp(self) -> dict[str, str]:
        """The ``error`` member of a QMP response (QDict key order: class, desc)."""
        return {"class": self.error_class, "desc": self.desc}


class GenericError(QapiError):
    """QEMU's ``ERROR_CLASS_GENERIC_ERROR``: almost every failure."""


class CommandNotFound(QapiError):
    """QEMU's ``ERROR_CLASS_COMMAND_NOT_FOUND``."""

    error_class = "CommandNotFound"


class StatsError(VmstatsError):
    """A provider could not produce its stats; the whole command fails, as in QEMU."""


class BinaryStatsError(StatsError):
    """A stats file could not be read or is malformed; the text says what and where."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"KVM stats: {problem}")


class VmGone(StatsError):
    """The VM's process exited.  Its stats fds still read, frozen: never serve those."""


class LibvirtError(StatsError):
    """libvirt (its Python binding, its daemon, or a domain) could not give what was asked;
    the text says why."""


class KvmUnavailable(VmstatsError):
    """KVM cannot be used here; the message says why and what to check."""


class AttachError(VmstatsError):
    """A VMM's stats fds could not be listed or copied; the text says why."""


class RecordingError(VmstatsError):
    """A file that is not a vmstats recording, or cannot be read at all."""


class GuestError(VmstatsError):
    """The demo guest stopped in a way the demo does not expect (shutdown, entry failure)."""


class RunDirUnfit(VmstatsError):
    """A directory the daemon must not take as its run directory (another user's, one
    others may write in, or one holding other files); the text says why."""


class SocketInUse(VmstatsError):
    """A live server (or something that is not a socket) is at the path we would listen on."""


class ClientError(VmstatsError):
    """Something a user can act on: unreachable socket, silent server, old QEMU, an error
    reply, a malformed reply."""


class NoAnswer(ClientError):
    """A server that accepted us and then said nothing in time (a QEMU monitor another
    client holds, a server hung): asking it again at once would wait as long again."""


class UsageError(ClientError):
    """The request names something the server does not serve (exit status 2)."""


class RemoteError(QapiError, ClientError):
    """A QMP server answered a request with an error: its class and text, passed on as they
    are (a forwarded request's error is the one QEMU gave)."""

    def __init__(self, error_class: str, desc: str, command: str | None = None) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.command = command

    def __str__(self) -> str:
        return f"{self.command}: {self.error_class}: {self.desc}" if self.command else self.desc


def os_reason(exc: OSError) -> str:
    """An OS error in the system's words ("Connection refused"): asyncio words its own
    (``Connect call failed ('127.0.0.1', 1)``) around the errno it got."""
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
