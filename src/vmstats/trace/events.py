"""Which tracepoints are counted per vCPU, and how their counts become named stats: the
plan shared by every VM a process serves.

An event with a symbolic table for its reason field (``kvm_exit``, ``kvm_userspace_exit``)
is counted per value, and each value the table names is one stat, ``EVENT(NAME)`` as
kvm_stat shows it (the table's common prefix, ``KVM_EXIT_``, taken off); values the table
does not name (gaps, or past its end) add up in ``EVENT(other)``.  Any other event is
one stat, its count.  Everything comes from the kernel's format files: a new kernel's
reasons appear by themselves.

By default the events are the two kvm_stat splits by reason, where this host can fire
them.  ``kvm_exit`` has one table per ISA (VMX, SVM); the host's ISA is told by the
vendor module it loaded.  Under another KVM (PVM here) ``kvm_exit`` never fires, so it
is not counted, and the log says so once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmstats.stats.model import StatsSchemaValue, StatsType
from vmstats.trace.bpf import Counted
from vmstats.trace.format import EventFormat, SymbolicTable, TraceFormatError, read_formats

log = logging.getLogger(__name__)

#: What kvm_stat splits by reason: the default events.
DEFAULT_EVENTS = ("kvm_exit", "kvm_userspace_exit")
#: The value of ``kvm_exit``'s ``isa`` field under each vendor module (KVM_ISA_VMX/SVM).
_VENDOR_ISA = {"kvm_intel": 1, "kvm_amd": 2}
#: A table longer than this is not counted per value (a slot is 8 bytes per vCPU).
MAX_SLOTS = 4096
_WHEN = re.compile(r"^(not )?REC->(\w+) == (-?\w+)$")


def host_fields(modules: Path = Path("/sys/module")) -> dict[str, int]:
    """What is known of this host's records before any fires: ``isa``, from the vendor
    module loaded (none under PVM)."""
    found = [isa for name, isa in _VENDOR_ISA.items() if (modules / name).is_dir()]
    return {"isa": found[0]} if found else {}


def applies(table: SymbolicTable, known: dict[str, int]) -> bool | None:
    """Does ``table`` name this host's values?  None when its condition is on a field
    whose host value is not known."""
    if not table.when:
        return True
    match = _WHEN.match(table.when)
    if match is None or match[2] not in known:
        return None
    return (known[match[2]] == int(match[3], 0)) != bool(match[1])


@dataclass(frozen=True)
class EventPlan:
    """One counted event: its stats' names, and the slots the named ones count in (from
    its first slot); a split event's last stat, ``EVENT(other)``, is the rest of its
    slots."""

    format: EventFormat
    names: tuple[str, ...]
    named: tuple[int, ...]
    field_offset: int = 0
    field_size: int = 0
    slots: int = 1  # the table's value slots; a split event has one more, the others'

    def counted(self, base: int) -> Counted:
        return Counted(self.format.id, base, self.field_offset, self.field_size, self.slots)

    @property
    def width(self) -> int:
        """Slots it takes in a thread's array."""
        return self.slots + 1 if self.field_size else 1

    def values(self, counts: Sequence[int], base: int) -> list[int]:
        """Its stats' values from a thread's counts, in the order of ``names``."""
        found = [counts[base + slot] for slot in self.named]
        if self.field_size:
            found.append(sum(counts[base : base + self.width]) - sum(found))
        return found


def _short(names: Sequence[str]) -> list[str]:
    """Names without the prefix they all share up to an underscore (``KVM_EXIT_``)."""
    first, last = min(names, default=""), max(names, default="")
    same = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
                min(len(first), len(last)))  # fmt: skip
    prefix = first[:same]
    prefix = prefix[: prefix.rfind("_") + 1]
    if not prefix or any(len(n) == len(prefix) for n in names):
        return list(names)
    return [n[len(prefix) :] for n in names]


def event_plan(event: EventFormat, known: dict[str, int]) -> EventPlan | None:
    """How ``event`` is counted on this host; None if it cannot fire here (a table for
    another ISA only), said in the log."""
    tables = [t for t in event.tables if t.field in event.fields]
    if not tables:
        return EventPlan(event, (event.name,), (0,))
    chosen = [t for t in tables if applies(t, known)]
    if not chosen:
        unknown = [t.when for t in tables if applies(t, known) is None]
        why = (f"its reasons depend on {unknown[0]!r}, and this host loads no KVM vendor "
               f"module that tells (the event does not fire under other KVMs)" if unknown
               else "no table of its reasons is this host's")  # fmt: skip
        log.info("tracepoint %s is not counted: %s", event.name, why)
        return None
    table = chosen[0]
    field = event.fields[table.field]
    mask = (1 << 8 * field.size) - 1
    named = {v & mask: n for v, n in table.names.items() if v & mask < MAX_SLOTS}
    values = sorted(named)
    names = [f"{event.name}({n})" for n in _short([named[v] for v in values])]
    slots = values[-1] + 1 if values else 0
    return EventPlan(event, (*names, f"{event.name}(other)"), tuple(values), field.offset,
                     field.size, slots)  # fmt: skip


class TracePlan:
    """The events counted per vCPU thread, their places in its region and their schema."""

    def __init__(self, events: Sequence[EventPlan]) -> None:
        self.events = tuple(events)
        self.bases: list[int] = []
        base = 0
        for plan in self.events:
            self.bases.append(base)
            base += plan.width
        self.slots = base
        self.counted = [p.counted(b) for p, b in zip(self.events, self.bases, strict=True)]
        #: Every stat's name, in natural order.
        self.names = [name for plan in self.events for name in plan.names]
        #: The schema, in wire order (the reverse of natural, as every provider's).
        self.schema = tuple(StatsSchemaValue(name, StatsType.CUMULATIVE)
                            for name in reversed(self.names))  # fmt: skip

    def values(self, counts: Sequence[int]) -> list[int]:
        """Every stat's value from a thread's counts, in natural order."""
        out: list[int] = []
        for plan, base in zip(self.events, self.bases, strict=True):
            out.extend(plan.values(counts, base))
        return out

    @property
    def event_names(self) -> list[str]:
        return [e.format.name for e in self.events]


def trace_plan(events: Sequence[str] = DEFAULT_EVENTS, root: Path | None = None,
               known: dict[str, int] | None = None) -> TracePlan:  # fmt: skip
    """The plan for ``events`` (``EVENT`` in the ``kvm`` system, or ``SYSTEM:EVENT``) on
    this host.  :class:`TraceFormatError` if tracefs or a named event is missing; an
    event that cannot fire here is left out (and logged)."""
    known = host_fields() if known is None else known
    by_system: dict[str, list[str]] = {}
    for spec in events:
        system, _, name = spec.rpartition(":")
        by_system.setdefault(system or "kvm", []).append(name)
    plans = []
    for system, names in by_system.items():
        for event in read_formats(system, names, root):
            plan = event_plan(event, known)
            if plan is not None:
                plans.append(plan)
    if not plans:
        raise TraceFormatError(f"none of the events {', '.join(events)} can fire on this host")
    return TracePlan(plans)
