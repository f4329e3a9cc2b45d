"""The ``tracepoints`` stats provider: KVM's tracepoints counted per vCPU thread in the
kernel (exit reasons, as kvm_stat's default view), served beside the ``kvm`` provider.

Each vCPU thread is counted by :mod:`.bpf` (its region of the counts, in the process's one
:class:`~vmstats.trace.bpf.Tracer`); a query reads each thread's counts from shared
memory (no syscall) and gives them as cumulative stats named as kvm_stat
names them (``kvm_userspace_exit(IO)``).  Target ``vcpu`` only: what a tracepoint counts
happens on a vCPU's thread.  It is vmstats' extension: it answers only requests that name
it (:mod:`vmstats.stats.registry`).

Whether it can run at all is asked once per process (:func:`open_tracing`): tracefs
and the events must be there, and this process must be allowed to count (root, or
``CAP_BPF`` and ``CAP_PERFMON``).  When it cannot, the provider is absent and the reason
is logged once; a vCPU thread that cannot be counted (gone) is left out of the replies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from vmstats.errors import VmstatsError
from vmstats.stats.model import StatsProvider, StatsResult, StatsSchema, StatsTarget
from vmstats.stats.wire import SCALAR, ResultMaker, ResultMemo, TemplateChoice
from vmstats.trace.bpf import ThreadCounts, Tracer
from vmstats.trace.events import DEFAULT_EVENTS, TracePlan, trace_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VcpuThread:
    """A vCPU's thread and the QOM path it is reported under."""

    qom_path: str
    tid: int


@dataclass
class Tracing:
    """What this process counts per vCPU thread (the plan) and the counting itself (one
    program per event, running from now on): made once, shared by every VM served."""

    plan: TracePlan
    tracer: Tracer
    said_full: bool = False

    def not_counted(self, vcpu: VcpuThread, why: Exception) -> None:
        """Say why a vCPU's thread is not counted: at debug level (a thread that ended),
        or once as a warning when every region is taken."""
        if self.tracer.full and not self.said_full:
            self.said_full = True
            log.warning("exit reasons of vCPU thread %d (%s) and of others after it are not "
                        "counted: %s", vcpu.tid, vcpu.qom_path, why)  # fmt: skip
        else:
            log.debug("vCPU thread %d (%s) not counted: %s", vcpu.tid, vcpu.qom_path, why)

    @cached_property
    def templates(self) -> TemplateChoice:
        """The wire templates of its stats, made once for every VM (2,048 vCPUs of 256
        VMs: a template per VM cost the daemon's first scan 130 ms)."""
        natural = list(enumerate(self.plan.names))
        return TemplateChoice([(name, SCALAR, i, i + 1) for i, name in reversed(natural)])

    @cached_property
    def schemas(self) -> list[StatsSchema]:
        return [StatsSchema(StatsProvider.TRACEPOINTS, StatsTarget.VCPU, self.plan.schema)]

    def close(self) -> None:
        self.tracer.close()


def _open(events: Sequence[str]) -> Tracing:
    plan = trace_plan(events)
    return Tracing(plan, Tracer(plan.counted, plan.slots))


def tracing_unavailable_reason(events: Sequence[str] = DEFAULT_EVENTS) -> str | None:
    """Why ``events`` cannot be counted here, or None: tried, and let go."""
    try:
        _open(events).close()
    except VmstatsError as exc:
        return str(exc)
    return None


def open_tracing(events: Sequence[str] = DEFAULT_EVENTS) -> Tracing | None:
    """The counting of ``events`` per vCPU thread, or None (and the reason logged once):
    the events' formats read, their programs loaded and attached."""
    try:
        tracing = _open(events)
    except VmstatsError as exc:
        log.warning("exit reasons (provider tracepoints) are off: %s", exc)
        return None
    plan = tracing.plan
    log.info("exit reasons (provider tracepoints): counting %s per vCPU",
             ", ".join(plan.event_names))  # fmt: skip
    return tracing


class _Counting:
    """One vCPU thread's counting, and its last values and result."""

    __slots__ = ("counts", "last", "thread")

    def __init__(self, thread: VcpuThread, counts: ThreadCounts) -> None:
        self.thread = thread
        self.counts = counts
        self.last: ResultMemo = {}


class TracepointsProvider:
    """Serves target ``vcpu`` of provider ``tracepoints`` for a set of vCPU threads of
    process ``pid`` (by default this one's), counted from when they were given
    (:meth:`set_vcpus`) until :meth:`close`.  A thread of another process is not
    counted: a VMM (or its QEMU's reply) names its vCPU threads, and it must not get
    another VM's exits by naming that VM's threads."""

    provider = StatsProvider.TRACEPOINTS

    def __init__(self, tracing: Tracing, vcpus: Iterable[VcpuThread] = (),
                 pid: int | None = None) -> None:  # fmt: skip
        self.tracing = tracing
        self.pid = os.getpid() if pid is None else pid
        self.plan = tracing.plan
        self._counting: dict[int, _Counting] = {}  # by thread id
        self._order: list[_Counting] = []  # in vCPU order
        self._templates = tracing.templates
        self._schema = tracing.schemas
        self._results = ResultMaker(self.provider)
        self.set_vcpus(vcpus)

    def set_vcpus(self, vcpus: Iterable[VcpuThread], known: Collection[int] = ()) -> None:
        """Count these vCPUs' threads from now on (in vCPU order); the counting of
        threads no longer listed is closed.  A thread that cannot be counted (it ended)
        is left out, and said at debug level.  ``known``: threads of the process the
        caller just listed (:meth:`Tracer.add`)."""
        wanted = list(vcpus)
        kept = {v.tid for v in wanted}
        for tid in [t for t in self._counting if t not in kept]:
            self._counting.pop(tid).counts.close()
        first: dict[int, VcpuThread] = {}  # by thread id: the vCPU it is counted for
        for vcpu in wanted:
            if vcpu.tid in first:
                log.debug("vCPU thread %d given twice: counted once, for %s", vcpu.tid,
                          first[vcpu.tid].qom_path)  # fmt: skip
            else:
                first[vcpu.tid] = vcpu
        new = [v for v in first.values() if (c := self._counting.get(v.tid)) is None
               or c.thread != v]  # fmt: skip
        for vcpu in new:
            if (moved := self._counting.pop(vcpu.tid, None)) is not None:
                moved.counts.close()  # counted for another vCPU before: from 0 again
        counts, refused = self.tracing.tracer.add([v.tid for v in new], self.pid, known)
        for vcpu in new:
            if vcpu.tid in counts:
                self._counting[vcpu.tid] = _Counting(vcpu, counts[vcpu.tid])
            else:
                self.tracing.not_counted(vcpu, refused[vcpu.tid])
        self._order = [self._counting[v.tid] for v in first.values() if v.tid in self._counting]

    @property
    def vcpus(self) -> list[VcpuThread]:
        return [c.thread for c in self._order]

    def stats(
        self,
        target: StatsTarget,
        names: Sequence[str] | None,
        targets: Sequence[str] | None,
    ) -> list[StatsResult]:
        if target != StatsTarget.VCPU:
            return []
        template = self._templates.select(names)
        if not template.entries:
            return []
        wanted = None if targets is None else set(targets)
        return [self._results.result(c.last, template, c.counts.read(), self._values,
                                     c.thread.qom_path)
                for c in self._order if wanted is None or c.thread.qom_path in wanted]  # fmt: skip

    def _values(self, raw: bytes) -> list[int]:
        """Every stat's value from a thread's counts (made only when they moved)."""
        return self.plan.values(memoryview(raw).cast("Q"))

    def schemas(self) -> list[StatsSchema]:
        return self._schema if self._order else []

    def close(self) -> None:
        """Stop counting its threads (their regions free again)."""
        for counting in self._counting.values():
            counting.counts.close()
        self._counting, self._order = {}, []
