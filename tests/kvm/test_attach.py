"""Copying another process's KVM stats fds, for real: the demo VM's child process (which
keeps its VM's and vCPUs' fds) and a QEMU 10.0 (which keeps every vCPU's)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.demo.guest import GuestProgram
from vmstats.demo.process import DemoProcess
from vmstats.demo.vm import DemoVM
from vmstats.errors import AttachError
from vmstats.kvm.attach import (
    AttachedVm,
    FdListing,
    StatsFdLink,
    attach,
    denied_why,
    fd_links,
    processes_with_stats_fds,
    stats_fd_links,
    still_held,
)
from vmstats.kvm.binstats import StatsFile
from vmstats.testing.hostile import wait_for
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

QEMU10_REASON = qemu10_unavailable_reason()


def anon_links() -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("anon_inode:kvm"):
            out.append(target)
    return out


@pytest.mark.kvm
@requires_kvm
def test_the_demo_vms_fds_are_copied_and_read_the_same() -> None:
    with DemoProcess(vcpus=2, rate=0.001) as demo:  # one round, then still: values stay
        provider = demo.provider
        assert provider is not None
        assert provider.vm is not None
        before = anon_links()
        attached = attach(demo.pid)
        try:
            assert attached.vm is not None
            assert sorted(attached.vcpus) == [0, 1]
            # the same kernel files: equal bytes, once nothing moved between the two reads
            # (the host's own memory management moves a VM counter now and then: seen once)
            pairs = [(attached.vm, provider.vm)] + [
                (file, provider.vcpus[index].file) for index, file in attached.vcpus.items()
            ]

            def same() -> bool:
                return all(copy.read_raw() == original.read_raw() for copy, original in pairs)

            assert wait_for(same)
            copied = Counter(anon_links()) - Counter(before)
            # only stats fds are ever taken: never a VM or vCPU control fd
            assert copied == Counter(["anon_inode:kvm-vm-stats", "anon_inode:kvm-vcpu-stats:0",
                                      "anon_inode:kvm-vcpu-stats:1"])  # fmt: skip
            assert demo.pid in processes_with_stats_fds()
            assert os.getpid() not in processes_with_stats_fds()
        finally:
            attached.close()
        assert sorted(anon_links()) == sorted(before)


def test_a_process_that_is_gone_is_a_clear_error() -> None:
    with pytest.raises(AttachError, match="no process"):
        attach(2**22 + 12345)
    assert stats_fd_links(os.getpid()) == []  # this process holds none of its own


def test_a_process_that_ends_while_its_fds_are_listed_is_said_to_be_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its fd folder, open already, lists as gone (ENOENT): that is no missing privilege."""

    def ended(path: object) -> list[str]:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "listdir", ended)
    with pytest.raises(AttachError, match="cannot list the fds") as info:
        fd_links(os.getpid())
    assert "CAP_SYS_PTRACE" not in str(info.value)


@pytest.mark.parametrize(("scope", "why"), [
    (None, "needs CAP_SYS_PTRACE"),  # no Yama (as on these hosts)
    ("1\n", "needs CAP_SYS_PTRACE"),
    ("2\n", "needs CAP_SYS_PTRACE, kernel.yama.ptrace_scope being 2"),
    ("3\n", "this kernel forbids it to every process: kernel.yama.ptrace_scope is 3, which "
             "only a reboot lowers"),
])  # fmt: skip
def test_a_denied_copy_says_why_as_yama_has_it(tmp_path: Path, scope: str | None,
                                               why: str) -> None:  # fmt: skip
    """Yama's scope 3 denies root too: "needs CAP_SYS_PTRACE" would send an admin who has
    it looking for what is not missing.  (These hosts have no Yama: its file is a copy.)"""
    path = tmp_path / "ptrace_scope"
    if scope is not None:
        path.write_text(scope)
    assert denied_why(str(path)) == why


def test_still_held_wants_each_fd_to_be_its_copys_file() -> None:
    """A VMM that replaced one stats fd of many still holds the others: that one alone
    must make the VM's copies stale (kcmp compares open files, not numbers)."""
    read_end, write_end = os.pipe()
    copy = os.dup(write_end)
    other = os.open(os.devnull, os.O_RDONLY)
    try:
        me = os.getpid()
        assert still_held(me, [(read_end, read_end), (write_end, copy)])
        assert not still_held(me, [(read_end, read_end), (write_end, other)])
        assert not still_held(me, [(write_end, other), (read_end, read_end)])
    finally:
        for fd in (read_end, write_end, copy, other):
            os.close(fd)


@pytest.mark.kvm
@requires_kvm
@pytest.mark.parametrize("found", ["a regular file of its bytes", "another vCPU's", "an eventfd"])
def test_a_copy_that_is_not_what_was_listed_is_refused(tmp_path: Path, found: str) -> None:
    """A scan lists a process's fds, and copies them after: meanwhile the process may
    close one and open another file at its number (a VM recreated on reset).  Each copy
    is checked to be what was listed (vCPU 0's stats fd here): not a regular file, even
    holding a stats file's bytes (a read of it could block, on a hung NFS), nor another
    vCPU's stats fd, nor another anonymous file.  Each copy refused is closed."""
    with DemoVM(2, GuestProgram(), rate=0, qemu_layout=True) as vm:
        files = [f for vcpu in vm.provider.vcpus if isinstance(f := vcpu.file, StatsFile)]
        if found == "an eventfd":
            there = os.eventfd(0)
        elif found == "another vCPU's":
            there = os.dup(files[1].fd)
        else:
            (tmp_path / "stats").write_bytes(os.pread(files[0].fd, 1 << 16, 0))
            there = os.open(tmp_path / "stats", os.O_RDONLY)
        held = len(os.listdir("/proc/self/fd"))
        try:
            with pytest.raises(AttachError, match="changed its fds while they were taken"):
                attach(os.getpid(), listed=FdListing([StatsFdLink(there, 0)], []))
            assert len(os.listdir("/proc/self/fd")) == held
            attached = attach(os.getpid(), listed=FdListing([StatsFdLink(files[0].fd, 0)], []))
            try:
                assert list(attached.vcpus) == [0]
                assert attached.vcpus[0].read() == files[0].read()
            finally:
                attached.close()
        finally:
            os.close(there)


def attach_when(pid: int, ready: Callable[[AttachedVm], bool], timeout: float = 30) -> AttachedVm:
    """``attach(pid)`` once what it finds is ``ready`` (a VMM opens its fds as it starts)."""
    deadline = time.monotonic() + timeout
    while True:
        attached = attach(pid)
        if ready(attached) or time.monotonic() > deadline:
            return attached
        attached.close()
        time.sleep(0.05)


@pytest.mark.kvm
@pytest.mark.qemu
@pytest.mark.skipif(QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")
def test_qemu_10_vcpu_fds_by_cpu_index_and_no_kick() -> None:
    with qemu10_vm(3) as vm:
        assert vm.proc is not None
        attached = attach_when(vm.proc.pid, lambda found: len(found.vcpus) == 3)
        try:
            assert attached.vm is None  # QEMU opens its VM stats fd per query only
            assert sorted(attached.vcpus) == [0, 1, 2]
            qmp = vm.connect()
            cpus = json.loads(qmp.request(b'{"execute":"query-cpus-fast"}'))["return"]
            threads = {c["cpu-index"]: c["thread-id"] for c in cpus}
            for index, file in attached.vcpus.items():  # the fd's creator is that vCPU's thread
                assert file.id.startswith(f"kvm-{threads[index]}/vcpu-")
            names = [d.name for d in attached.vcpus[0].layout.descriptors]
            at = {n: attached.vcpus[0].layout.descriptors[names.index(n)].index
                  for n in ("exits", "signal_exits")}  # fmt: skip
            paths = {c["cpu-index"]: c["qom-path"] for c in cpus}
            ours_before = attached.vcpus[0].read()
            reply = json.loads(qmp.request(
                b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":'
                b'[{"provider":"kvm","names":["exits"]}]}}'))["return"]  # fmt: skip
            ours_after = attached.vcpus[0].read()
            theirs = next(r for r in reply if r["qom-path"] == paths[0])["stats"][0]["value"]
            assert ours_before[at["exits"]] <= theirs <= ours_after[at["exits"]]
            kicks = [f.read()[at["signal_exits"]] for f in attached.vcpus.values()]
            for _ in range(100):
                for file in attached.vcpus.values():
                    file.read()
            assert [f.read()[at["signal_exits"]] for f in attached.vcpus.values()] == kicks
            qmp.close()
        finally:
            attached.close()
