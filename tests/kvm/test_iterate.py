"""One pass of the BPF iterators (:mod:`vmstats.kvm.iterate`) lists what ``/proc`` lists,
and the scanner falls back to ``/proc`` where they cannot run: on the real kernel, with a
real VM (the demo's), a process holding copies of its stats fds (this one), and a
process holding a file named as a KVM fd."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_iterators, requires_kvm
from vmstats import btf
from vmstats.btf import Btf, BtfError, func_id
from vmstats.demo.process import DemoProcess
from vmstats.kvm.attach import attach, fd_links, kvm_fds
from vmstats.kvm.iterate import KvmIterator, PassTooBig
from vmstats.kvm.scan import DEFAULT_BUDGET, ProcessScanner
from vmstats.serve.discover import process_uid
from vmstats.testing.fleet import Fleet

DECOY = """
import os, sys
os.chdir(sys.argv[1])
held = [open(name, "w") for name in ("anon_inode:kvm-vm", "anon_inode:kvm-vcpu-stats:0")]
print("ok", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def decoy(tmp_path: Path) -> Iterator[int]:
    """A process holding files named as KVM fds: neither listing may take them for some."""
    proc = subprocess.Popen([sys.executable, "-c", DECOY, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ok\n"
    yield proc.pid
    proc.kill()
    proc.wait()


def _kvm_links(pid: int) -> list[tuple[int, str]]:
    """What ``/proc`` says of the fds of ``pid`` that the iterator hands back."""
    links = []
    for fd in list(Path(f"/proc/{pid}/fd").iterdir()):
        try:
            links.append((int(fd.name), os.readlink(fd)))
        except FileNotFoundError:  # the listing's own fd
            continue
    return sorted((fd, link) for fd, link in links if link.startswith("anon_inode:kvm-")
                  and not link.startswith("anon_inode:kvm-vcpu:"))  # fmt: skip


@pytest.mark.kvm
@requires_kvm
@requires_iterators
def test_one_pass_hands_back_what_proc_says_of_every_kvm_fd_and_vcpu_thread(decoy: int) -> None:
    iterator = KvmIterator()
    try:
        with DemoProcess(vcpus=2, rate=0.001) as demo:
            found = iterator.read(DEFAULT_BUDGET)
            assert sorted(found.files[demo.pid]) == _kvm_links(demo.pid)
            assert sorted(found.files[os.getpid()]) == _kvm_links(os.getpid())  # copies
            assert decoy not in found.files
            assert found.threads[demo.pid] == {tid: f"CPU {index}/KVM"
                                               for index, tid in enumerate(demo.threads)}  # fmt: skip
            for pid in (demo.pid, os.getpid()):  # the same listing either way
                listed, passed = fd_links(pid), kvm_fds(found.files[pid])
                assert (passed.links, passed.control) == (listed.links, listed.control)
            assert fd_links(decoy) == kvm_fds([])
        assert demo.pid not in iterator.read(DEFAULT_BUDGET).files  # gone
    finally:
        iterator.close()


@pytest.mark.kvm
@requires_kvm
@requires_iterators
def test_a_scan_lists_the_same_vmms_in_one_pass_as_through_proc(decoy: int) -> None:
    with DemoProcess(vcpus=2, rate=0.001) as demo:
        by_pass = ProcessScanner(iterate_from=0)
        through_proc = ProcessScanner(iterate_from=None)
        try:
            one, other = by_pass.scan(), through_proc.scan()
        finally:
            by_pass.close()
        assert one.by_iterator
        assert not other.by_iterator
        assert demo.pid in one.vmms
        assert one.vmms == other.vmms
        ours = one.listings[demo.pid]
        assert ours.links == other.listings[demo.pid].links
        assert ours.control == other.listings[demo.pid].control
        # the vCPU threads' names came with the pass: none is read again to attach
        assert ours.vcpu_threads == {
            tid: f"CPU {index}/KVM" for index, tid in enumerate(demo.threads)
        }
        assert other.listings[demo.pid].vcpu_threads is None


@pytest.mark.kvm
@requires_kvm
def test_where_the_iterators_cannot_run_the_scan_lists_through_proc_and_says_why_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "vmlinux"
    broken.write_bytes(b"\xeb\x9f\x01\x00" + bytes(28))  # BTF of the other byte order
    monkeypatch.setattr(btf, "VMLINUX", str(broken))
    caplog.set_level(logging.INFO, logger="vmstats.kvm.scan")
    with DemoProcess(vcpus=1, rate=0.001) as demo:
        scanner = ProcessScanner(iterate_from=0)
        first = scanner.scan()
        assert not first.by_iterator
        assert demo.pid in first.vmms
        assert scanner.unavailable is not None
        assert "byte order" in scanner.unavailable
        scanner.scan()
    said = [r.getMessage() for r in caplog.records if "through /proc" in r.getMessage()]
    assert said == [f"processes' fds are listed through /proc: {scanner.unavailable}"]


def test_btf_that_is_not_btf_is_said_so(tmp_path: Path) -> None:
    for content, words in ((b"", "is not BTF"), (b"x" * 64, "byte order")):
        path = tmp_path / "vmlinux"
        path.write_bytes(content)
        with pytest.raises(BtfError, match=words):
            Btf(str(path))
    with pytest.raises(BtfError, match="cannot read"):
        Btf(str(tmp_path / "absent"))


@pytest.mark.skipif(not Path(btf.VMLINUX).exists(), reason="this kernel has no BTF")
def test_btf_places_the_members_the_programs_read() -> None:
    kernel = Btf()
    task = kernel.struct("task_struct")
    assert {"pid", "tgid", "comm"} <= task.named.keys()
    assert task.named["tgid"] == task.named["pid"] + 4  # pid_t pid; pid_t tgid;
    file = kernel.struct("file")
    assert "f_path" in file.named or file.anonymous
    path = kernel.struct("path")
    assert path.named == {"mnt": 0, "dentry": 8}
    assert path.size == 16
    with pytest.raises(BtfError, match="no type named"):
        kernel.struct("vmstats_no_such_struct")


@requires_iterators
def test_the_kernel_names_the_type_id_of_a_function_or_says_it_has_none() -> None:
    assert func_id("bpf_iter_task_file") > 0
    assert func_id("bpf_iter_task") != func_id("bpf_iter_task_file")
    with pytest.raises(BtfError, match="no function vmstats_no_such_function"):
        func_id("vmstats_no_such_function")


@pytest.mark.kvm
@requires_kvm
@requires_iterators
def test_a_vmm_is_attached_by_the_names_its_threads_had_in_the_pass() -> None:
    """The names a pass read are the ones the vCPUs are indexed by (no thread's name is
    read again): here the pass's names, swapped, swap the indexes.  A VMM as QEMU makes
    one: each vCPU made by a thread of its own, named ``CPU N/KVM``."""
    with Fleet(2, prefix="iterate") as fleet:
        fleet.start(1)
        (pid,) = fleet.pids().values()
        scanner = ProcessScanner(iterate_from=0)
        try:
            listing = scanner.scan().listings[pid]
        finally:
            scanner.close()
        assert listing.vcpu_threads is not None
        tid = {name: tid for tid, name in listing.vcpu_threads.items()}
        first, second = tid["CPU 0/KVM"], tid["CPU 1/KVM"]
        as_read = attach(pid, listed=listing)
        swapped = attach(pid, listed=replace(listing, vcpu_threads={
            first: "CPU 1/KVM", second: "CPU 0/KVM"}))  # fmt: skip
        try:
            assert {i: f.id for i, f in as_read.vcpus.items()} == {
                0: f"kvm-{first}/vcpu-0", 1: f"kvm-{second}/vcpu-1"}  # fmt: skip
            assert {i: f.id for i, f in swapped.vcpus.items()} == {
                1: f"kvm-{first}/vcpu-0", 0: f"kvm-{second}/vcpu-1"}  # fmt: skip
        finally:
            as_read.close()
            swapped.close()


@pytest.mark.kvm
@requires_kvm
@requires_iterators
def test_a_pass_that_hands_back_more_than_a_scan_reads_is_left_for_proc_within_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever may use /dev/kvm can open KVM fds (and name threads ``CPU ...``) by the
    thousand: a pass that hands back more records than the scan's budget is left, and
    that scan lists /proc within the budget; said once, until a pass fits again."""
    caplog.set_level(logging.INFO, logger="vmstats.kvm.scan")
    with DemoProcess(vcpus=2, rate=0.001) as demo:
        iterator = KvmIterator()
        try:
            with pytest.raises(PassTooBig):
                iterator.read(3)  # the demo alone holds 4 such fds, this process 3 copies
            assert demo.pid in iterator.read(DEFAULT_BUDGET).files
        finally:
            iterator.close()
        scanner = ProcessScanner(budget=DEFAULT_BUDGET, iterate_from=0)
        try:
            scanner.budget = 3
            first, second = scanner.scan(), scanner.scan()
            scanner.budget = DEFAULT_BUDGET
            scanner.forget(demo.pid)
            third = scanner.scan()
        finally:
            scanner.close()
    assert not first.by_iterator
    assert not second.by_iterator
    assert first.deferred  # /proc, within the budget: most processes are left for later
    assert third.by_iterator
    assert demo.pid in third.vmms
    said = [r.getMessage() for r in caplog.records if "this time" in r.getMessage()]
    assert said == ["KVM fds listed through /proc this time: the iterators handed back "
                    "more than 3 records, more than a scan reads"]  # fmt: skip


@requires_iterators
@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare (util-linux)")
def test_in_a_pid_namespace_of_its_own_a_process_is_told_the_iterators_are_not_for_it() -> None:
    """The iterators hand back the kernel's pids, which name other processes (or none)
    in a pid namespace: there the scanner must list /proc, and says why."""
    script = ("from vmstats.kvm.iterate import KvmIterator, IteratorUnavailable\n"
              "try:\n    KvmIterator().close()\nexcept IteratorUnavailable as exc:\n"
              "    print(exc)\n")  # fmt: skip
    inside = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             "-c", script], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert inside.stdout == "this process is in a pid namespace of its own\n", inside.stderr
    outside = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert outside.stdout == ""  # loaded, closed


@pytest.mark.skipif(os.geteuid() != 0, reason="running as uid 65534 needs root")
def test_without_privileges_the_iterators_are_said_to_need_them(
    nobody_env: dict[str, str],
) -> None:
    """As uid 65534 (no CAP_BPF): one line that says what is missing."""
    script = ("import os\nfrom vmstats.kvm.iterate import KvmIterator, IteratorUnavailable\n"
              "try:\n    KvmIterator().close()\nexcept IteratorUnavailable as exc:\n"
              "    print(exc)\n")  # fmt: skip
    said = subprocess.run(["/usr/bin/python3", "-c", script], env=nobody_env,
                          capture_output=True, text=True, timeout=60, user=65534, group=65534,
                          extra_groups=[])  # fmt: skip
    assert said.stdout == (
        "cannot load BPF programs: Operation not permitted (needs root, "
        "or CAP_BPF and CAP_PERFMON)\n"
    ), said.stderr


SETEUID = """
import fcntl, os, sys
kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
stats = fcntl.ioctl(vm, 0xAECE, 0)  # KVM_GET_STATS_FD: the VM's
os.setresuid(0, 65534, 0)  # acts as nobody; really, and saved, root
print("ok", flush=True)
sys.stdin.read()
"""


@pytest.mark.kvm
@requires_kvm
@requires_iterators
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as uid 65534 needs root")
def test_a_pass_says_whose_each_process_is_as_proc_does_its_effective_uid() -> None:
    """The pass hands back each process's effective uid (whose VM it is: its socket is
    theirs), as ``/proc/PID/status`` says it; a scan's listing carries it to the daemon,
    which reads no status file for it."""
    proc = subprocess.Popen([sys.executable, "-c", SETEUID], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    iterator = KvmIterator()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ok\n"
        found = iterator.read(DEFAULT_BUDGET)
        assert found.uids[proc.pid] == process_uid(proc.pid) == 65534
        scanner = ProcessScanner(iterate_from=0)
        try:
            assert scanner.scan().listings[proc.pid].uid == 65534
        finally:
            scanner.close()
    finally:
        iterator.close()
        proc.kill()
        proc.wait()


OWN_TABLE = """
import ctypes, fcntl, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def own_table():
    assert libc.unshare(0x400) == 0  # CLONE_FILES: this thread's fds are its own from now
    kvm = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
    print(vm, flush=True)
    sys.stdin.read()
thread = threading.Thread(target=own_table)
thread.start()
thread.join()
"""


@pytest.mark.kvm
@requires_kvm
@requires_iterators
def test_a_thread_with_an_fd_table_of_its_own_does_not_lend_its_fds_to_its_process() -> None:
    """/proc/PID/fd and pidfd_getfd use the process's fd table (its main thread's): a VM
    made by a thread that unshared its table is in neither, and not in a pass either
    (else its fd numbers would name other files of the process)."""
    proc = subprocess.Popen([sys.executable, "-c", OWN_TABLE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    iterator = KvmIterator()
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) > 0  # its VM made
        assert _kvm_links(proc.pid) == []
        assert proc.pid not in iterator.read(DEFAULT_BUDGET).files
    finally:
        iterator.close()
        proc.kill()
        proc.wait()
