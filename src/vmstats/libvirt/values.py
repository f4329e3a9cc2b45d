"""libvirt's copy of a domain's KVM stats, turned back into stats files of this kernel.

libvirt (>= 8.9) passes QEMU's ``query-stats`` on as typed parameters: VM stats as
``vm.NAME.SUFFIX``, vCPU stats as ``vcpu.N.NAME.SUFFIX``, where the suffix is the stat's
type (cumulative ``sum``, instant ``cur``, peak ``max``); booleans become bools, and
histograms, units, exponents and the schema are dropped.  Here each stat is put back at its
place in the kernel's own layout (read from a throwaway VM, :mod:`vmstats.kvm.probe`), so
the KVM provider serves it exactly as it serves a stats fd: same schema, same order, same
reply.  A stat of the layout that libvirt did not give (the histograms, or a stat given
under another type's suffix) is *omitted*: absent from the values, never a made-up zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmstats.kvm.binstats import KvmStatsType, StatsLayout

#: libvirt's suffix for each type of stat (its qemuDomainGetStatsVm/Vcpu naming).
SUFFIXES = {
    KvmStatsType.CUMULATIVE: "sum",
    KvmStatsType.INSTANT: "cur",
    KvmStatsType.PEAK: "max",
}
_U64 = 1 << 64


@dataclass
class DomainStats:
    """One libvirt read of a domain: its VM stats and each vCPU's, keyed ``NAME.SUFFIX``."""

    vm: dict[str, int] = field(default_factory=dict)
    vcpus: dict[int, dict[str, int]] = field(default_factory=dict)  # vCPU number -> stats


def _u64(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and 0 <= value < _U64:
        return value
    return None  # not a KVM stat value (libvirt's own vcpu.N.time is given as such too)


def domain_stats(params: Mapping[str, object]) -> DomainStats:
    """Parse libvirt's typed parameters (``getAllDomainStats``' dict for one domain).

    Keys of libvirt's own (``vcpu.current``, ``vcpu.N.state``, ``vcpu.N.time``...) do not
    have a stat's shape and are left out; so is anything that is not a u64 or a bool.
    """
    out = DomainStats()
    for key, raw in params.items():
        parts = key.split(".")
        value = _u64(raw)
        if value is None:
            continue
        if len(parts) == 3 and parts[0] == "vm":
            out.vm[f"{parts[1]}.{parts[2]}"] = value
        elif len(parts) == 4 and parts[0] == "vcpu" and parts[1].isdecimal():
            out.vcpus.setdefault(int(parts[1]), {})[f"{parts[2]}.{parts[3]}"] = value
    return out


class LibvirtStatsFile:
    """A stats file of this kernel's ``layout`` whose values are libvirt's latest.

    It reads like a :class:`vmstats.kvm.binstats.StatsFile` (``read_raw`` gives the data
    block, the same bytes while the values stay the same, so the provider's memo works),
    and says which stats it has no value for in :attr:`omitted`."""

    def __init__(self, layout: StatsLayout, ident: str) -> None:
        self.layout = layout
        self.id = ident
        self._slots = [
            (d.name, f"{d.name}.{SUFFIXES[KvmStatsType(d.type_bits)]}", d.index)
            for d in layout.descriptors
            if d.size == 1 and d.type_bits in SUFFIXES
        ]
        self._all = frozenset(d.name for d in layout.descriptors)
        self._values = [0] * (layout.data_size // 8)
        self._raw = layout.decoder.pack(*self._values)
        self.omitted = self._all

    def update(self, values: Mapping[str, int]) -> None:
        """Take a new libvirt read of this VM or vCPU (``NAME.SUFFIX`` -> value)."""
        given = []
        for name, key, index in self._slots:
            value = values.get(key)
            if value is not None:
                self._values[index] = value
                given.append(name)
        self.omitted = self._all.difference(given)
        self._raw = self.layout.decoder.pack(*self._values)

    def read_raw(self) -> bytes:
        return self._raw

    def decode(self, raw: bytes) -> tuple[int, ...]:
        return self.layout.decoder.unpack(raw)

    def close(self) -> None:
        """Nothing is held: libvirt's values are copies."""
