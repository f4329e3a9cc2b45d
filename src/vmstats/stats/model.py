"""The data model of QEMU's ``qapi/stats.json``: enums and structs, wire names in comments.

Python names follow QAPI (``qom-path`` -> ``qom_path``, ``bucket-size`` -> ``bucket_size``).
These classes carry no wire logic: :mod:`.schema` binds them to the QAPI declaration,
which decodes (with QEMU's errors) and encodes (with QEMU's key order) them.

Lists that QEMU builds by prepending are kept *in QEMU's order* in these objects, because
that is what goes on the wire; :mod:`.order` gives tools the natural order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class StatsType(StrEnum):
    """How a statistic behaves over time."""

    CUMULATIVE = "cumulative"  # only increases
    INSTANT = "instant"  # goes up or down
    PEAK = "peak"  # a maximum: only increases
    LINEAR_HISTOGRAM = "linear-histogram"
    LOG2_HISTOGRAM = "log2-histogram"  # one bucket per power of two

    @property
    def is_histogram(self) -> bool:
        return self in (StatsType.LINEAR_HISTOGRAM, StatsType.LOG2_HISTOGRAM)


class StatsUnit(StrEnum):
    """Unit of a statistic; absent means a plain number or counter."""

    BYTES = "bytes"
    SECONDS = "seconds"
    CYCLES = "cycles"
    BOOLEAN = "boolean"


class StatsProvider(StrEnum):
    """Who supplies the statistics (``cryptodev`` since QEMU 8.0).

    ``tracepoints`` is vmstats' extension (docs/exit-reasons.md): KVM's tracepoints counted
    per vCPU (exit reasons).  It answers only a request that names it, so a client that
    names no provider gets QEMU's reply, and it is left out of introspection."""

    KVM = "kvm"
    CRYPTODEV = "cryptodev"
    TRACEPOINTS = "tracepoints"

    @property
    def is_extension(self) -> bool:
        """Not QEMU's: served only when named."""
        return self in EXTENSION_PROVIDERS


#: The providers QEMU does not have (see :class:`StatsProvider`).
EXTENSION_PROVIDERS = frozenset({StatsProvider.TRACEPOINTS})
EXTENSION_NAMES = frozenset(p.value for p in EXTENSION_PROVIDERS)


class StatsTarget(StrEnum):
    """What the statistics are about (``cryptodev`` since QEMU 8.0)."""

    VM = "vm"
    VCPU = "vcpu"
    CRYPTODEV = "cryptodev"


#: The targets every VM has, which a tool reads to see a whole VM (``cryptodev`` is about
#: QEMU's crypto backends, not the VM's execution).
VM_TARGETS = (StatsTarget.VM, StatsTarget.VCPU)
VM_TARGET_NAMES = frozenset(t.value for t in VM_TARGETS)

#: ``StatsValue`` alternate: ``scalar`` (uint64), ``boolean`` or ``list`` (histogram buckets).
StatsValue = int | bool | list[int]


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """One provider and, optionally, the stat names wanted from it (None = all)."""

    provider: StatsProvider
    names: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class StatsVCPUFilter:
    """Branch of :class:`StatsFilter` for target ``vcpu``: QOM paths (None = all)."""

    vcpus: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class StatsFilter:
    """Arguments of ``query-stats`` (a flat union on ``target``).

    ``vcpus`` belongs to the ``vcpu`` branch only; the visitor rejects it for other targets.
    """

    target: StatsTarget
    providers: Sequence[StatsRequest] | None = None
    vcpus: Sequence[str] | None = None


class Stats(NamedTuple):
    """One value: ``{"name": ..., "value": ...}``.

    A NamedTuple, so a provider may hand over plain ``(name, value)`` tuples: results are
    built once per vCPU per query and must stay cheap.
    """

    name: str
    value: StatsValue


@dataclass(slots=True)
class StatsResult:
    """The stats of one object of one provider; ``qom_path`` is None for the whole VM."""

    provider: StatsProvider
    stats: Sequence[tuple[str, StatsValue]]
    qom_path: str | None = None


@dataclass(frozen=True, slots=True)
class StatsSchemaValue:
    """Description of one statistic.

    ``base`` is present only when ``exponent`` is non-zero (10 or 2: SI or IEC prefix);
    ``bucket_size`` only for linear histograms.
    """

    name: str
    type: StatsType
    unit: StatsUnit | None = None
    base: int | None = None
    exponent: int = 0
    bucket_size: int | None = None


@dataclass(slots=True)
class StatsSchema:
    """All statistics one provider offers for one target."""

    provider: StatsProvider
    target: StatsTarget
    stats: Sequence[StatsSchemaValue]
