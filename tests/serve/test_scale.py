"""A host of many VMs at a size CI affords (docs/benchmarks.md has the big runs): every
VM of a fleet laid out as QEMU >= 8.1 lays them out is served, scraped and reaped, and a
VMM that makes its vCPUs on one unnamed thread is served too."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import resource
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kvm.conftest import requires_iterators, requires_kvm
from tests.serve.conftest import Daemon, log_of, rows
from vmstats.kvm.attach import attach, cpu_index_of_threads, creator_thread
from vmstats.serve import daemon, discover
from vmstats.testing.fleet import Fleet
from vmstats.testing.hostile import stats_fd_count, wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import RawQMP

pytestmark = [pytest.mark.kvm, requires_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")]  # fmt: skip

VMS = int(os.environ.get("VMSTATS_FLEET_VMS", "32"))
VCPUS = 8


def test_a_fleet_is_served_scraped_and_reaped(start_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    proc, run_dir = start_daemon("--metrics", f"127.0.0.1:{port}")
    with Fleet(VCPUS, prefix="scale") as fleet:
        names = fleet.start(VMS)
        pid = fleet.pids()[names[0]]  # laid out as QEMU: vCPU N made by its thread CPU N/KVM
        threads = cpu_index_of_threads(pid)
        assert sorted(threads.values()) == list(range(VCPUS))
        attached = attach(pid)
        try:
            assert {creator_thread(f) for f in attached.vcpus.values()} == set(threads)
        finally:
            attached.close()
        assert wait_for(lambda: set(names) <= set(rows(run_dir)), timeout=60)
        served = rows(run_dir)
        for name, pid in fleet.pids().items():
            assert served[name]["pid"] == pid
            assert served[name]["vcpus"] == VCPUS
        assert stats_fd_count(proc.pid) == VMS * VCPUS  # one copy of each vCPU's, no more
        qmp = RawQMP(run_dir / f"{names[-1]}.qmp", timeout=30)
        try:
            qmp.negotiate()
            reply = json.loads(qmp.request(b'{"execute":"query-stats","arguments":'
                                           b'{"target":"vcpu"}}'))  # fmt: skip
        finally:
            qmp.close()
        assert len(reply["return"]) == VCPUS
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as page:
            text = page.read().decode()
        for name in names:
            assert f'vmstats_up{{vm="{name}"}} 1.0' in text
            exits = [line for line in text.splitlines()
                     if line.startswith("kvm_vcpu_exits_total{") and f'vm="{name}"' in line]  # fmt: skip
            assert len(exits) == VCPUS, name
    # the fleet stopped: every VM reaped, every copied fd closed
    assert wait_for(lambda: not set(names) & set(rows(run_dir)), timeout=60)
    assert not list(run_dir.glob("scale-*.qmp"))
    assert stats_fd_count(proc.pid) == 0


def test_a_scan_lets_the_loop_turn_between_two_new_vms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every VM's socket and ``/metrics`` share the daemon's loop: a scan serving many
    new VMs (a host's first: 0.3 s at 256 VMs) takes and serves each on a turn of the
    loop of its own (a slice of 0 s here), so the clients of the VMs served already are
    answered meanwhile."""
    monkeypatch.setattr("vmstats.slices.SLICE", 0.0)
    events: list[str] = []
    serve = daemon.Daemon._serve

    async def serving(self: daemon.Daemon, *args: Any, **kwargs: Any) -> None:
        events.append("serve")
        await serve(self, *args, **kwargs)

    monkeypatch.setattr(daemon.Daemon, "_serve", serving)

    async def scan_beside_another_client() -> set[int]:
        host = daemon.Daemon(tmp_path / "run")
        host.rundir.claim()
        try:
            scan = asyncio.ensure_future(host.scan())
            while not scan.done():
                events.append("turn")  # another client answered: one per turn of the loop
                await asyncio.sleep(0)
            scan.result()
            return set(host.served)
        finally:
            await host.close()

    with Fleet(VCPUS, prefix="turns") as fleet:
        fleet.start(4)
        served = asyncio.run(scan_beside_another_client())
        assert set(fleet.pids().values()) <= served
    at = [i for i, event in enumerate(events) if event == "serve"]
    assert len(at) >= 4
    assert all("turn" in events[a:b] for a, b in itertools.pairwise(at)), events


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test leaves frozen goes back to the collector after it."""
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("thawed")
def test_the_vms_a_burst_served_are_kept_from_collections_and_let_go_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a scan made to serve many new VMs (two here) stays while they run: no
    collection walks it (47,000 objects at 256 VMs, walked for nothing after a first
    scan and at every full collection).  A VM removed lets it go, and the next burst
    frees the removed VM's objects (cycles among them) before keeping what lives: under
    churn, kept garbage would pile up."""
    monkeypatch.setattr(daemon, "KEEP_FROM", 2)

    async def keep_remove_keep(fleet: Fleet) -> list[object]:
        host = daemon.Daemon(tmp_path / "run")
        host.rundir.claim()
        try:
            await host.scan()
            seen: list[object] = [gc.get_freeze_count() > 0]
            pid = next(iter(host.served))
            gone = weakref.ref(host.served[pid])
            await host._remove(pid)
            seen.append(gc.get_freeze_count())
            fleet.start(2)
            await host.scan()
            seen += [gc.get_freeze_count() > 0, gone()]
            return seen
        finally:
            await host.close()

    with Fleet(1, prefix="kept") as fleet:
        fleet.start(2)
        assert asyncio.run(keep_remove_keep(fleet)) == [True, 0, True, None]


@requires_iterators
def test_a_scan_in_one_pass_reads_no_status_file_to_know_whose_each_vm_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass of a first scan says each VMM's effective uid: the daemon reads no
    ``/proc/PID/status`` for it (a read of 10 us and more, 256 at a first scan)."""
    looked_up: list[int] = []

    def process_uid(pid: int) -> int | None:
        looked_up.append(pid)
        return discover.process_uid(pid)

    monkeypatch.setattr(daemon, "process_uid", process_uid)

    async def first_scan() -> dict[int, int | None]:
        host = daemon.Daemon(tmp_path / "run")
        host.rundir.claim()
        host.scanner.prepare()
        try:
            await host.scan()
            return {pid: vm.uid for pid, vm in host.served.items()}
        finally:
            await host.close()

    with Fleet(1, prefix="whose") as fleet:
        fleet.start(2)
        served = asyncio.run(first_scan())
        pids = set(fleet.pids().values())
    assert {served[pid] for pid in pids} == {0}
    assert not pids & set(looked_up)


def soft_open_files(pid: int) -> int:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def test_a_low_soft_limit_of_open_files_is_raised(start_daemon: Callable[..., Daemon]) -> None:
    """The usual soft limit (1,024) held about 100 VMs of 8 vCPUs: the daemon raises it
    to the hard limit, as systemd advises a program that uses no ``select()``."""
    proc, run_dir = start_daemon(open_files=(64, 4096))
    with Fleet(VCPUS, prefix="nofile") as fleet:
        names = fleet.start(16)  # 128 stats fds to copy, twice the soft limit given
        assert wait_for(lambda: set(names) <= set(rows(run_dir)), timeout=60), log_of(run_dir)
    assert soft_open_files(proc.pid) == 4096


def test_vms_left_for_want_of_fds_are_served_once_there_are_fds(
    start_daemon: Callable[..., Daemon],
) -> None:
    """With too few fds for every VM (a hard limit it cannot raise), those it has fds
    for are served, and the others said and tried again at each scan, not only when
    their VMM changes: served once VMs that go free fds."""
    with Fleet(VCPUS, prefix="short") as fleet:
        names = fleet.start(16)
        _, run_dir = start_daemon(open_files=(200, 200))  # 12 fds a VM, 32 kept free
        assert wait_for(lambda: "VMs not served for now" in log_of(run_dir)
                        and set(names) & set(rows(run_dir)), timeout=60)  # fmt: skip
        first = set(names) & set(rows(run_dir))
        assert len(first) <= 14
        for name in first:
            fleet.stop(name)
        rest = set(names) - first
        want = min(len(rest), len(first))  # as many as the fds of those gone hold
        assert wait_for(lambda: len(rest & set(rows(run_dir))) >= want, timeout=60), log_of(run_dir)
        for failed in ("cannot serve", "Too many open files"):  # none taken half way
            assert failed not in log_of(run_dir)


def test_a_vmm_making_its_vcpus_on_one_unnamed_thread_is_served(
    start_daemon: Callable[..., Daemon],
) -> None:
    """No ``CPU N/KVM`` thread names: its vCPUs are numbered by their KVM vcpu_ids."""
    _proc, run_dir = start_daemon()
    with Fleet(4, unnamed=True, prefix="unnamed") as fleet:
        names = fleet.start(3)
        assert wait_for(lambda: set(names) <= set(rows(run_dir)), timeout=60)
        qmp = RawQMP(run_dir / f"{names[0]}.qmp", timeout=30)
        try:
            qmp.negotiate()
            cpus = json.loads(qmp.request(b'{"execute":"query-cpus-fast"}'))["return"]
        finally:
            qmp.close()
        assert [cpu["cpu-index"] for cpu in cpus] == [0, 1, 2, 3]


def test_the_vmms_threads_are_counted_at_most_once_a_second_of_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot plug is noticed by the VMM's thread count, read before a vCPU query at most
    once a second (the loop's clock, set here): it was read before every one (a ``/proc``
    read per query, 256 a second with ``top`` watching 256 VMs) while it did not change."""
    from vmstats.kvm.attach import thread_count
    from vmstats.stats.model import StatsTarget

    counted: list[int] = []

    def counting(pid: int) -> int:
        counted.append(pid)
        return thread_count(pid)

    monkeypatch.setattr("vmstats.serve.served.thread_count", counting)

    async def query(seconds: list[float]) -> None:
        host = daemon.Daemon(tmp_path / "run")
        host.rundir.claim()
        try:
            await host.scan()
            vm = next(vm for vm in host.served.values() if vm.name == name)
            with monkeypatch.context() as clock:  # the loop's clock too: no await inside
                for at in seconds:
                    clock.setattr("vmstats.serve.served.time.monotonic", lambda at=at: 1000.0 + at)
                    vm.fresh(StatsTarget.VCPU)
        finally:
            await host.close()

    with Fleet(2, prefix="threads") as fleet:
        (name,) = fleet.start(1)
        asyncio.run(query([0.0, 0.1, 0.5, 0.9, 0.99, 1.0, 1.5, 2.1]))
    assert len(counted) == 3  # at 0, 1.0 and 2.1 s
