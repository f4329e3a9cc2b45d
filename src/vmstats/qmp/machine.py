"""What a monitor says about the machine around the stats: its name and its vCPUs, the
replies of ``query-name`` and ``query-cpus-fast``.

Clients map vCPU numbers to QOM paths with ``query-cpus-fast`` (QEMU's paths are not
contiguous), and HMP's ``cpu N`` picks a vCPU by index: every monitor that serves vCPU
stats must say which vCPUs exist.  A :class:`Machine` is mutable on purpose: the host
daemon learns names and QOM paths from a QEMU's socket, and vCPUs are hot-plugged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmstats.errors import ClientError


@dataclass(frozen=True, slots=True)
class CpuInfoFast:
    """One vCPU as QEMU 7.2's ``query-cpus-fast`` reports it on x86 (QAPI ``CpuInfoFast``)."""

    cpu_index: int
    qom_path: str
    thread_id: int
    props: dict[str, int] | None = None  # CpuInstanceProperties: socket-id, core-id...
    target: str = "x86_64"


def pc_vcpu_path(index: int) -> str:
    """The QOM path QEMU's pc machine gives CPU ``index`` (device[1] is not a CPU)."""
    return f"/machine/unattached/device[{0 if index == 0 else index + 1}]"


def pc_props(index: int) -> dict[str, int]:
    """QEMU's default x86 topology for ``-smp N`` (one socket of N cores), as it lists it."""
    return {"core-id": index, "thread-id": 0, "socket-id": 0}


@dataclass
class Machine:
    """The machine a monitor reports: ``name`` (None: QEMU's ``{}``) and its vCPUs."""

    name: str | None = None
    cpus: list[CpuInfoFast] = field(default_factory=list)

    @classmethod
    def from_paths(cls, paths: Iterable[str], thread_id: int = 0,
                   name: str | None = None) -> Machine:  # fmt: skip
        """vCPUs known by their QOM paths only (index order)."""
        return cls(name, [CpuInfoFast(i, p, thread_id) for i, p in enumerate(paths)])

    @classmethod
    def pc(cls, vcpus: Iterable[tuple[int, str, int]], name: str | None = None) -> Machine:
        """vCPUs of QEMU's pc machine with its default topology: (CPU index, QOM path,
        thread id) each."""
        return cls(name, [CpuInfoFast(i, path, tid, pc_props(i)) for i, path, tid in vcpus])

    def qom_paths(self) -> Sequence[str]:
        return [cpu.qom_path for cpu in self.cpus]

    def query_name(self) -> dict[str, Any]:
        return {} if self.name is None else {"name": self.name}

    def query_cpus_fast(self) -> list[CpuInfoFast]:
        return list(self.cpus)


def name_from_wire(reply: Any) -> str | None:
    """QEMU's ``-name`` from a ``query-name`` return value (decoded JSON); None when it
    has none (``{}``) or the reply is no name."""
    name = reply.get("name") if isinstance(reply, dict) else None
    return name if isinstance(name, str) and name else None


def cpus_from_wire(reply: Any) -> list[CpuInfoFast]:
    """A ``query-cpus-fast`` return value (decoded JSON) as :class:`CpuInfoFast` values;
    :class:`ClientError` when it is not one."""
    if not isinstance(reply, list):
        raise ClientError("malformed reply: query-cpus-fast did not return a list")
    out = []
    for entry in reply:
        try:
            props = entry.get("props")
            out.append(CpuInfoFast(int(entry["cpu-index"]), str(entry["qom-path"]),
                                   int(entry["thread-id"]),
                                   dict(props) if isinstance(props, dict) else None,
                                   str(entry.get("target", "x86_64"))))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClientError(f"malformed reply: a query-cpus-fast entry is broken ({exc})"
                              ) from None  # fmt: skip
    return sorted(out, key=lambda cpu: cpu.cpu_index)


def cpu_paths(reply: Any, address: str) -> list[str]:
    """The QOM paths of a ``query-cpus-fast`` reply by CPU index (QEMU's are not
    contiguous); :class:`ClientError`, naming ``address``, when it is no such reply."""
    try:
        return [cpu.qom_path for cpu in cpus_from_wire(reply)]
    except ClientError as exc:
        raise ClientError(f"{exc} (from {address})") from None
