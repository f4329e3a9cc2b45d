"""Exit reasons counted in the kernel (``perf_event_open`` on ``kvm_userspace_exit``,
filtered by reason) for the demo's known loop: K ``out``, M MMIO writes and a ``hlt`` a
round give exactly the exits the guest made, and agree with the binary stats
``mmio_exits`` and ``halt_exits`` over the same interval."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.demo.guest import GuestProgram
from vmstats.demo.vm import DemoVM
from vmstats.trace.counters import CounterError, ReasonCounters, open_counter, totals
from vmstats.trace.format import read_format

REASONS = ["KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_HLT"]


@pytest.mark.kvm
@requires_kvm
def test_userspace_exits_are_counted_as_the_guest_made_them(mounted: Path) -> None:
    event = read_format("kvm", "kvm_userspace_exit", mounted)
    table = event.table("reason")
    assert table is not None
    counters = ReasonCounters(event, table)
    try:
        counters.open([threading.get_native_id()], REASONS)  # run_rounds runs vCPUs here
    except CounterError as exc:
        pytest.skip(str(exc))
    try:
        with DemoVM(2, GuestProgram(outs_per_round=5, mmio_per_round=3), rate=0) as vm:
            files = [v.file for v in vm.provider.vcpus]
            offsets = {d.name: d.offset // 8 for d in files[0].layout.descriptors}
            before = [f.decode(f.read_raw()) for f in files]
            vm.run_rounds(7)
            after = [f.decode(f.read_raw()) for f in files]
            counted = totals(counters.counts())
            guest = vm.counters
        assert counted == {"KVM_EXIT_IO": sum(c.io_exits for c in guest),
                           "KVM_EXIT_MMIO": sum(c.mmio_exits for c in guest),
                           "KVM_EXIT_HLT": sum(c.halts for c in guest)}  # fmt: skip
        assert counted == {"KVM_EXIT_IO": 2 * 7 * 5, "KVM_EXIT_MMIO": 2 * 7 * 3,
                           "KVM_EXIT_HLT": 2 * 7}  # fmt: skip

        def moved(name: str) -> int:
            return sum(a[offsets[name]] - b[offsets[name]] for a, b in zip(after, before,
                                                                           strict=True))  # fmt: skip

        assert moved("mmio_exits") == counted["KVM_EXIT_MMIO"]
        assert moved("halt_exits") == counted["KVM_EXIT_HLT"]
    finally:
        counters.close()


def test_a_counter_that_cannot_be_opened_says_why() -> None:
    with pytest.raises(CounterError, match="cannot count tracepoint"):
        open_counter(2**31 - 1, threading.get_native_id())  # no such tracepoint
