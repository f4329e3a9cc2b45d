"""The kvm provider and the demo VM on the real kernel (no mocks: /dev/kvm works here).

Exact counters are asserted exactly; noisy ones (host preemption) within bounds.  Values
are checked against an independent raw reader written here, not against our parser.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from typing import Any

import pytest

from tests.kvm.conftest import ON_PVM, PROGRAM, requires_kvm, requires_pvm
from vmstats.demo import DemoVM, qemu_vcpu_path
from vmstats.demo.process import DemoProcess
from vmstats.errors import GuestError
from vmstats.qapi.dispatch import Dispatcher
from vmstats.stats import StatsRegistry
from vmstats.stats.commands import stats_dispatcher

pytestmark = [pytest.mark.kvm, requires_kvm]

TYPES = {0: "cumulative", 1: "instant", 2: "peak", 3: "linear-histogram", 4: "log2-histogram"}
UNITS = {0x00: None, 0x10: "bytes", 0x20: "seconds", 0x30: "cycles", 0x40: "boolean"}


def raw_stats(fd: int) -> dict[str, dict[str, Any]]:
    """An independent reader: one pread per field and per value, nothing cached."""
    _, name_size, num_desc, _, desc_offset, data_offset = struct.unpack("=6I", os.pread(fd, 24, 0))
    out = {}
    for i in range(num_desc):
        raw = os.pread(fd, 16 + name_size, desc_offset + i * (16 + name_size))
        flags, exponent, size, offset, bucket_size = struct.unpack_from("=IhHII", raw)
        name = raw[16:].split(b"\0")[0].decode()
        values = [
            struct.unpack("=Q", os.pread(fd, 8, data_offset + offset + 8 * k))[0]
            for k in range(size)
        ]
        out[name] = {
            "flags": flags,
            "exponent": exponent,
            "size": size,
            "values": values,
            "bucket_size": bucket_size,
        }
    return out


def dispatcher(vm: DemoVM | DemoProcess) -> Dispatcher:
    registry = StatsRegistry()
    assert vm.provider is not None
    registry.add_stats_callbacks(vm.provider)
    return stats_dispatcher(registry)


def query(d: Dispatcher, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    reply = d.dispatch({"execute": "query-stats", "arguments": arguments})
    assert "return" in reply, reply
    result: list[dict[str, Any]] = reply["return"]
    return result


def vcpu_values(d: Dispatcher) -> dict[str, dict[str, Any]]:
    return {
        r["qom-path"]: {s["name"]: s["value"] for s in r["stats"]}
        for r in query(d, {"target": "vcpu"})
    }


def delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    return int(after[name]) - int(before[name])


def test_halt_exits_and_run_counts_are_exact(demo_vm: DemoVM) -> None:
    d = dispatcher(demo_vm)
    before = vcpu_values(d)
    demo_vm.run_rounds(5)
    after = vcpu_values(d)
    for index, counters in enumerate(demo_vm.counters):
        path = qemu_vcpu_path(index)
        assert counters.halts == 5
        assert counters.runs == 5 * PROGRAM.exits_per_round
        assert delta(after[path], before[path], "halt_exits") == 5
        exits = delta(after[path], before[path], "exits")
        assert counters.runs <= exits <= counters.runs + 10  # preemption may add a few


@requires_pvm
def test_pvm_emulator_counters_are_exact(demo_vm: DemoVM) -> None:
    """On PVM: fpu_reload counts KVM_RUN calls, MMIO writes are mmio_exits, port I/O is
    emulated (io_exits stays 0), and insn_emulation counts guest instructions."""
    d = dispatcher(demo_vm)
    before = vcpu_values(d)
    demo_vm.run_rounds(5)
    middle = vcpu_values(d)
    demo_vm.run_rounds(4)
    after = vcpu_values(d)
    ipr = PROGRAM.instructions_per_round
    for index, counters in enumerate(demo_vm.counters):
        path = qemu_vcpu_path(index)
        assert delta(after[path], before[path], "fpu_reload") == counters.runs
        assert delta(after[path], before[path], "mmio_exits") == counters.mmio_exits == 27
        assert delta(after[path], before[path], "io_exits") == 0
        # the first call stops at the 5th HLT, before that round's final jmp
        assert delta(middle[path], before[path], "insn_emulation") == 5 * ipr - 1
        assert delta(after[path], middle[path], "insn_emulation") == 4 * ipr


def test_schema_lists_every_kernel_stat_with_its_type_and_unit(demo_vm: DemoVM) -> None:
    d = dispatcher(demo_vm)
    reply = d.dispatch({"execute": "query-stats-schemas"})["return"]
    schemas = {s["target"]: {v["name"]: v for v in s["stats"]} for s in reply}
    raw = {
        "vm": raw_stats(demo_vm.stats_files[0].fd),
        "vcpu": raw_stats(demo_vm.stats_files[1].fd),
    }
    for target in ("vm", "vcpu"):
        assert list(schemas[target]) == list(raw[target])[::-1]  # reverse kernel order
        for name, desc in raw[target].items():
            entry = schemas[target][name]
            assert entry["type"] == TYPES[desc["flags"] & 0xF]
            assert entry.get("unit") == UNITS[desc["flags"] & 0xF0]
            assert entry["exponent"] == desc["exponent"]
            assert entry.get("base") == (
                None if not desc["exponent"] else 2 if desc["flags"] & 0x100 else 10
            )
    assert "exits" in schemas["vcpu"]
    assert "pages_4k" in schemas["vm"]


def test_values_equal_an_independent_raw_read(demo_vm: DemoVM) -> None:
    demo_vm.run_rounds(3)  # vCPUs are parked: nothing moves while we compare
    d = dispatcher(demo_vm)
    vm_result = query(d, {"target": "vm"})
    assert [r.get("qom-path") for r in vm_result] == [None]
    results = query(d, {"target": "vcpu"}) + vm_result
    files = [*[v.file for v in demo_vm.provider.vcpus][::-1], demo_vm.provider.vm]
    for result, file in zip(results, files, strict=True):
        raw = raw_stats(file.fd)  # type: ignore[union-attr]
        ours = {s["name"]: s["value"] for s in result["stats"]}
        assert set(ours) == set(raw)
        for name, desc in raw.items():
            if desc["flags"] & 0xF0 == 0x40:
                assert ours[name] is (desc["values"][0] != 0)
            elif desc["size"] == 1:
                assert ours[name] == desc["values"][0]
            else:
                assert ours[name] == desc["values"][::-1]


def test_vcpu_order_paths_and_filter(demo_vm: DemoVM) -> None:
    d = dispatcher(demo_vm)
    assert [r["qom-path"] for r in query(d, {"target": "vcpu"})] == [
        "/machine/unattached/device[2]",
        "/machine/unattached/device[0]",
    ]
    only = query(
        d,
        {
            "target": "vcpu",
            "vcpus": ["/machine/unattached/device[2]"],
            "providers": [{"provider": "kvm", "names": ["halt_exits", "exits"]}],
        },
    )
    assert [[s["name"] for s in r["stats"]] for r in only] == [["halt_exits", "exits"]]


def test_queries_never_kick_a_running_vcpu() -> None:
    """1,000 queries while the vCPUs run in the VM's own process: no vCPU sees a signal
    exit (QEMU 7.2 adds one per vCPU per query) and the guest keeps running."""
    with DemoProcess(vcpus=2, program=PROGRAM, rate=200) as demo:
        d = dispatcher(demo)
        time.sleep(0.2)
        before = vcpu_values(d)
        for _ in range(1000):
            query(d, {"target": "vcpu"})
        after = vcpu_values(d)
        assert demo.alive()
    assert demo.proc is not None
    assert demo.proc.returncode == 0
    for path in before:
        assert delta(after[path], before[path], "halt_exits") > 0, "the guest was running"
        assert delta(after[path], before[path], "signal_exits") == 0


def test_stats_fds_are_read_only_and_not_inherited(demo_vm: DemoVM) -> None:
    files = demo_vm.stats_files
    assert len(files) == 1 + demo_vm.vcpu_count
    for file in files:
        assert fcntl.fcntl(file.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert not os.get_inheritable(file.fd)
    # The kernel names the creating thread: this one made the VM and every vCPU.
    creator = threading.get_native_id()
    assert demo_vm.provider.vm is not None
    assert demo_vm.provider.vm.id == f"kvm-{creator}"
    assert [v.file.id for v in demo_vm.provider.vcpus] == [
        f"kvm-{creator}/vcpu-{i}" for i in range(demo_vm.vcpu_count)
    ]


def test_close_releases_every_fd() -> None:
    before = set(os.listdir("/proc/self/fd"))
    vm = DemoVM(vcpus=3, program=PROGRAM, rate=0)
    vm.run_rounds(1)
    vm.close()
    assert set(os.listdir("/proc/self/fd")) <= before | {"3"}


@pytest.mark.skipif(not ON_PVM, reason="documents a PVM fact")
def test_pvm_port_io_reaches_userspace_but_not_io_exits(demo_vm: DemoVM) -> None:
    demo_vm.run_rounds(2)
    assert all(c.io_exits == 2 * PROGRAM.outs_per_round for c in demo_vm.counters)


def test_demo_process_hands_over_many_stats_fds() -> None:
    """More vCPUs than one SCM_RIGHTS message can carry; the child exits cleanly."""
    with DemoProcess(vcpus=210, program=PROGRAM, rate=5) as demo:
        d = dispatcher(demo)
        results = query(
            d, {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["halt_exits"]}]}
        )
        assert len(results) == 210
        assert results[0]["qom-path"] == qemu_vcpu_path(209)
        child = demo.pid
    assert not os.path.exists(f"/proc/{child}")


def test_demo_process_reports_a_bad_configuration() -> None:
    demo = DemoProcess(vcpus=0)
    with pytest.raises(GuestError, match="a VM needs at least one vCPU"):
        demo.start()
    assert demo.proc is not None
    assert demo.proc.wait(10) == 1
