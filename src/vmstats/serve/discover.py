"""Which processes on this host are VMs to serve, and what to call them.

A VMM is a process holding KVM stats fds that it created itself (a process holding
copies, such as the demo's parent or another reader, is not one).  Its name is QEMU's
``-name`` (``-name web1`` or ``-name guest=web1,...``) when it has one, else
``<comm>-<pid>``; names are made unique on the host and safe as file names.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def qemu_name(args: list[str]) -> str | None:
    """The value of QEMU's ``-name`` option (its ``guest=`` form too), or None."""
    for option, value in itertools.pairwise(args):
        if option in ("-name", "--name"):
            first = value.split(",")[0]
            return first.removeprefix("guest=") or None
    return None


def vm_name(pid: int, taken: Iterable[str] = (), given: str | None = None) -> str:
    """A name for the VM of ``pid``: ``given`` (what its QEMU's ``query-name`` said), else
    QEMU's ``-name``, else ``<comm>-<pid>``; unique among ``taken`` (``-<pid>`` is added on
    a clash) and safe as a file name."""
    name = given or qemu_name(cmdline(pid))
    if name is None:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "vm"
        name = f"{comm}-{pid}"
    name = _UNSAFE.sub("_", name).strip("._") or f"vm-{pid}"
    if name in set(taken):
        name = f"{name}-{pid}"
    return name
