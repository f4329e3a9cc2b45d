"""The ``tracepoints`` provider on this kernel: each vCPU thread counts exactly the exits
its guest made, by reason, in agreement with the binary stats; a thread that is not
counted adds nothing to anyone; counting closes with the provider; the plan comes from
the kernel's format files; and without the privileges the provider is absent, said
once, not an error."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.trace.conftest import requires_tracing
from vmstats import caps
from vmstats.demo.guest import GuestProgram
from vmstats.demo.vm import DemoVM
from vmstats.stats.model import StatsProvider, StatsTarget
from vmstats.stats.order import natural_stats
from vmstats.testing.hostile import DemoServer, wait_for
from vmstats.trace import bpf
from vmstats.trace.bpf import Tracer
from vmstats.trace.events import event_plan, trace_plan
from vmstats.trace.format import parse_format, read_format
from vmstats.trace.provider import TracepointsProvider, Tracing, VcpuThread

libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_SYS_ADMIN = 24, 21
IO, MMIO, HLT = ("kvm_userspace_exit(IO)", "kvm_userspace_exit(MMIO)",
                 "kvm_userspace_exit(HLT)")  # fmt: skip


@pytest.fixture(scope="module")
def tracing() -> Iterator[Tracing]:
    """The counting of kvm_userspace_exit, as the daemon opens it."""
    plan = trace_plan(["kvm_userspace_exit"])
    found = Tracing(plan, Tracer(plan.counted, plan.slots))
    yield found
    found.close()


def values(provider: TracepointsProvider) -> dict[str, dict[str, int]]:
    """Each vCPU's counts by stat name."""
    out = {}
    for result in provider.stats(StatsTarget.VCPU, None, None):
        assert result.provider is StatsProvider.TRACEPOINTS
        out[result.qom_path or ""] = {n: int(v) for n, v in natural_stats(result)}  # type: ignore[arg-type]
    return out


def run_until(vm: DemoVM, halts: int) -> None:
    """Run the vCPU threads until each made ``halts`` rounds (bounded: a stuck guest fails)."""
    vm.start()
    deadline = time.monotonic() + 60
    while min(c.halts for c in vm.counters) < halts:
        assert time.monotonic() < deadline, "the guest did not run"
        time.sleep(0.01)
    vm.stop()


@pytest.mark.kvm
@requires_kvm
@requires_tracing
@pytest.mark.parametrize("batch", [True, False], ids=["in-one-batch", "one-by-one"])
def test_each_vcpu_thread_counts_the_exits_its_guest_made(
    tracing: Tracing, batch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its threads enter the map in one call, or one by one where the kernel (before
    5.6) refuses batches: here a command no kernel knows."""
    if not batch:
        monkeypatch.setattr(bpf, "BPF_MAP_UPDATE_BATCH", 0x7FFF)
    program = GuestProgram(outs_per_round=5, mmio_per_round=3)
    with DemoVM(2, program, rate=0, qemu_layout=True) as vm, \
            DemoVM(1, program, rate=0, qemu_layout=True) as other:  # fmt: skip
        threads = [VcpuThread(v.qom_path, tid)
                   for v, tid in zip(vm.provider.vcpus, vm.thread_ids, strict=True)]  # fmt: skip
        exits = TracepointsProvider(tracing, threads)
        files = [v.file for v in vm.provider.vcpus]
        offsets = {d.name: d.offset // 8 for d in files[0].layout.descriptors}
        before = [f.decode(f.read_raw()) for f in files]
        run_until(vm, 50)
        run_until(other, 50)  # a VM whose thread is not counted: its exits count nowhere
        after = [f.decode(f.read_raw()) for f in files]
        found = values(exits)
        guests = vm.counters
        exits.close()
    assert list(found) == [v.qom_path for v in threads]
    for index, (guest, counted) in enumerate(zip(guests, found.values(), strict=True)):
        assert counted[IO] == guest.io_exits
        assert counted[MMIO] == guest.mmio_exits
        assert counted[HLT] == guest.halts >= 50
        # the ratios of the loop: 5 outs and 3 MMIO writes a round (the last may be cut)
        assert 5 * guest.halts <= counted[IO] <= 5 * (guest.halts + 1)
        assert 3 * guest.halts <= counted[MMIO] <= 3 * (guest.halts + 1)
        assert sum(counted.values()) == guest.runs  # no other reason: nothing else is counted

        def moved(name: str, index: int = index) -> int:
            return after[index][offsets[name]] - before[index][offsets[name]]

        assert counted[MMIO] == moved("mmio_exits")
        assert counted[HLT] == moved("halt_exits")


@pytest.mark.kvm
@requires_kvm
@requires_tracing
def test_counting_is_closed_with_the_provider_and_a_gone_thread_is_left_out(
    tracing: Tracing,
) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with DemoVM(2, rate=0, qemu_layout=True) as vm:
        start = fds()
        threads = [VcpuThread(f"/cpu{i}", tid) for i, tid in enumerate(vm.thread_ids)]
        gone = VcpuThread("/gone", 2**22 + 7)  # no such thread: left out, not an error
        exits = TracepointsProvider(tracing, [*threads, gone])
        assert exits.vcpus == threads
        assert tracing.tracer.counted() == sorted(t.tid for t in threads)
        assert fds() == start  # a thread counted is an entry in a map, not an fd
        exits.set_vcpus(threads[:1])  # vCPU 1 unplugged: counted no more
        assert tracing.tracer.counted() == [threads[0].tid]
        assert [r.qom_path for r in exits.stats(StatsTarget.VCPU, None, None)] == ["/cpu0"]
        exits.close()
        assert tracing.tracer.counted() == []
        assert exits.stats(StatsTarget.VCPU, None, None) == []
        assert exits.schemas() == []


@pytest.mark.kvm
@requires_kvm
@requires_tracing
def test_a_region_used_again_counts_from_zero(tracing: Tracing) -> None:
    """A vCPU counted after another went gets that one's region, emptied first."""
    program = GuestProgram(outs_per_round=2, mmio_per_round=1)
    with DemoVM(1, program, rate=0) as vm:
        me = VcpuThread("/me", threading.get_native_id())
        first = TracepointsProvider(tracing, [me])
        vm.run_rounds(5)
        assert values(first)["/me"][HLT] == 5
        first.close()
        second = TracepointsProvider(tracing, [me])
        vm.run_rounds(2)
        assert values(second)["/me"][HLT] == 2
        second.close()


@requires_tracing
def test_a_thread_is_counted_by_one_provider_at_a_time(tracing: Tracing) -> None:
    """A second provider naming a counted thread does not share its count: closing it
    would stop the first one's."""
    me = VcpuThread("/me", threading.get_native_id())
    first = TracepointsProvider(tracing, [me])
    second = TracepointsProvider(tracing, [me])
    assert (first.vcpus, second.vcpus) == ([me], [])
    second.close()
    assert tracing.tracer.counted() == [me.tid]
    first.close()
    assert tracing.tracer.counted() == []


def test_the_plan_comes_from_the_format_files(mounted: Path) -> None:
    exit_format = read_format("kvm", "kvm_exit", mounted)
    vmx_table = exit_format.table("exit_reason", "REC->isa == 1")
    assert vmx_table is not None
    vmx = event_plan(exit_format, {"isa": 1})  # an Intel host
    svm = event_plan(exit_format, {"isa": 2})  # an AMD host
    assert vmx is not None
    assert svm is not None
    assert "kvm_exit(HLT)" in vmx.names
    assert "kvm_exit(hlt)" in svm.names
    assert vmx.names[-1] == "kvm_exit(other)"
    assert len(vmx.names) == len(vmx_table.names) + 1
    assert event_plan(exit_format, {}) is None  # PVM: no vendor module, kvm_exit never fires
    userspace = event_plan(read_format("kvm", "kvm_userspace_exit", mounted), {})
    assert userspace is not None
    assert userspace.names[2] == IO  # KVM_EXIT_ taken off, in the table's order
    whole = event_plan(read_format("kvm", "kvm_pio", mounted), {})
    assert whole is not None
    assert whole.names == ("kvm_pio",)
    plan = trace_plan(["kvm_userspace_exit", "kvm:kvm_pio"], mounted, {})
    assert plan.event_names == ["kvm_userspace_exit", "kvm_pio"]
    assert [v.name for v in plan.schema][::-1] == plan.names
    counts = list(range(plan.slots))
    assert plan.values(counts)[-1] == counts[-1]  # kvm_pio: its one slot, after the others


@pytest.mark.kvm
@requires_kvm
def test_without_the_privileges_the_provider_is_absent_and_the_log_says_why(
    tmp_path: Path,
) -> None:
    """The demo as root without CAP_BPF and CAP_PERFMON: it runs and serves the kvm
    provider; ``tracepoints`` has no schema and no values, and the log says why, once."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start the demo with capabilities taken away")
    socket = tmp_path / "demo.qmp"

    def without_them() -> None:
        """Out of the bounding set: root's exec gets every capability but these."""
        for capability in (caps.CAP_BPF, caps.CAP_PERFMON, CAP_SYS_ADMIN):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")

    demo = subprocess.Popen([sys.executable, "-m", "vmstats", "demo", "--headless", "--qmp",
                             str(socket)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=without_them)  # fmt: skip
    try:
        assert demo.stdout is not None
        assert demo.stdout.readline().startswith("vmstats demo: ready")

        def ask(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "vmstats", *args], capture_output=True,
                                  text=True, timeout=30)  # fmt: skip

        assert "halt_exits" in ask("query", str(socket), "--target", "vcpu").stdout
        absent = ask("schemas", str(socket), "--provider", "tracepoints")
        assert (absent.returncode, absent.stderr) == (
            2,
            "vmstats: unknown provider 'tracepoints': this server offers kvm\n",
        )
    finally:
        demo.terminate()
        _, err = demo.communicate(timeout=30)
    lines = [line for line in err.splitlines() if "exit reasons" in line]
    assert len(lines) == 1, err
    assert "provider tracepoints) are off" in lines[0]
    assert "Traceback" not in err


@requires_tracing
def test_a_thread_can_be_counted_only_once(tracing: Tracing) -> None:
    mine = VcpuThread("/me", threading.get_native_id())
    exits = TracepointsProvider(tracing, [mine, VcpuThread("/again", mine.tid)])
    try:
        assert exits.vcpus == [mine]  # the second is left out: counts are per thread
    finally:
        exits.close()


def test_a_user_who_may_not_read_tracefs_gets_no_provider_and_one_line(
    mounted: Path, nobody_env: dict[str, str]
) -> None:
    """tracefs mounted (root's, mode 0700): uid 65534 cannot read the formats; counting
    is off, said in one line, no traceback."""

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    script = ("import logging; logging.basicConfig(format='%(message)s')\n"
              "from vmstats.trace.provider import open_tracing\nprint(open_tracing())\n")  # fmt: skip
    done = subprocess.run(["/usr/bin/python3", "-c", script], env=nobody_env,
                          preexec_fn=as_nobody, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.stdout == "None\n"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("exit reasons (provider tracepoints) are off: ")
    assert "Permission denied" in lines[0] or "not mounted" in lines[0]


GAPS = r"""name: gaps
ID: 9
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:u16 why;	offset:8;	size:2;	signed:0;

print fmt: "%s", __print_symbolic(REC->why, { 0, "R_ZERO" }, { 2, "R_TWO" }, { 65600, "R_FAR" })
"""


def test_values_the_table_does_not_name_add_up_in_other() -> None:
    """Gaps (1) and values past the table's end count in ``EVENT(other)``; a value too
    big for the field (65600 in 16 bits) is its masked value, as the kernel stores it."""
    plan = event_plan(parse_format("x", GAPS), {})
    assert plan is not None
    assert plan.names == ("gaps(ZERO)", "gaps(TWO)", "gaps(FAR)", "gaps(other)")
    assert (plan.field_offset, plan.field_size) == (8, 2)
    slots = 65600 & 0xFFFF  # 64
    assert plan.slots == slots + 1
    counts = [0] * plan.width
    counts[0], counts[1], counts[2], counts[slots], counts[plan.slots] = 5, 7, 11, 13, 17
    assert plan.values(counts, 0) == [5, 11, 13, 7 + 17]


@pytest.mark.kvm
@requires_kvm
@requires_tracing
def test_the_demo_counts_its_own_exit_reasons() -> None:
    """``vmstats demo`` as root: its vCPUs' exits by reason, named by provider."""
    with DemoServer(vcpus=2, rate=100) as demo:

        def io() -> list[int]:
            out = subprocess.run([sys.executable, "-m", "vmstats", "query", str(demo.path),
                                  "--target", "vcpu", "--provider", "tracepoints", "--names",
                                  IO, "--json"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout  # fmt: skip
            return [r["stats"][0]["value"] for r in json.loads(out)]

        assert wait_for(lambda: len(found := io()) == 2 and min(found) > 0)


@requires_tracing
def test_when_every_region_is_taken_the_rest_are_left_out_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = trace_plan(["kvm_userspace_exit"])
    small = Tracing(plan, Tracer(plan.counted, plan.slots, capacity=1))
    done = threading.Event()
    others = [threading.Thread(target=done.wait) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        tids = [threading.get_native_id(), *(t.native_id or 0 for t in others)]
        exits = TracepointsProvider(small, [VcpuThread(f"/cpu{i}", t) for i, t in enumerate(tids)])
        assert [v.qom_path for v in exits.vcpus] == ["/cpu0"]
        exits.set_vcpus([VcpuThread(f"/cpu{i}", t) for i, t in enumerate(tids)])  # a rescan
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1
        assert "1 threads are counted already" in warned[0].getMessage()
        exits.set_vcpus([VcpuThread("/cpu1", tids[1])])  # vCPU 0 gone: its region free
        assert [v.qom_path for v in exits.vcpus] == ["/cpu1"]
        exits.close()
    finally:
        done.set()
        small.close()
