"""The scan for VMMs (:mod:`vmstats.kvm.scan`) lists a process again only when its fd
table changed, and never reads more fds a scan than its budget: what a process that
floods its fd table can cost the daemon (docs/reliability.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.demo.process import DemoProcess
from vmstats.kvm.scan import ProcessScanner, fd_counts_known

pytestmark = pytest.mark.skipif(not fd_counts_known(),
                                reason="this kernel gives no fd counts (Linux < 6.2)")  # fmt: skip

HOLDER = """
import os, resource, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for line in sys.stdin:
    held += [os.open("/dev/null", os.O_RDONLY) for _ in range(int(line))]
    print("ok", flush=True)
"""


class FdHolder:
    """A process that opens as many more fds as it is told."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.pid = self.proc.pid

    def open(self, count: int) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders() -> Iterator[list[FdHolder]]:
    made = [FdHolder() for _ in range(4)]
    for holder in made:
        holder.open(0)  # started and answering
    yield made
    for holder in made:
        holder.close()


def settled(scanner: ProcessScanner) -> None:
    """Scan until a scan lists nothing it did not list before but what the host itself
    changes meanwhile (its own daemons open and close fds too)."""
    for _ in range(5):
        if not scanner.scan().deferred:
            return
    raise AssertionError("the scanner never caught up")


@pytest.mark.kvm
@requires_kvm
def test_a_vmm_is_found_and_a_process_is_listed_again_only_when_its_fds_change(
    holders: list[FdHolder],
) -> None:
    scanner = ProcessScanner()
    with DemoProcess(vcpus=2, rate=0.001) as demo:
        # ready means settled: its vCPU threads named (which opens an fd for a moment)
        names = {Path(f"/proc/{demo.pid}/task/{tid}/comm").read_text() for tid in demo.threads}
        assert names == {"CPU 0/KVM\n", "CPU 1/KVM\n"}
        first = scanner.scan()
        assert demo.pid in first.vmms
        assert {link.vcpu_id for link in first.vmms[demo.pid]} == {None, 0, 1}
        assert {h.pid for h in holders} <= first.changed
        again = scanner.scan()
        assert demo.pid in again.vmms  # still known...
        assert demo.pid not in again.changed  # ...without being listed again
        assert not {h.pid for h in holders} & again.changed
        holders[0].open(1)
        third = scanner.scan()
        assert holders[0].pid in third.changed
        assert not {h.pid for h in holders[1:]} & third.changed
    gone = scanner.scan()
    assert demo.pid not in gone.vmms


def test_a_scan_reads_no_more_fds_than_its_budget(holders: list[FdHolder]) -> None:
    """With the host listed, four processes each open 300 fds: a budget of 700 lists
    two a scan at most, the rest at the next scans; a process with more fds than the budget is never
    listed, and said so."""
    scanner = ProcessScanner()
    settled(scanner)
    scanner.budget = 700
    for holder in holders:
        holder.open(300)
    ours = {h.pid for h in holders}
    first = scanner.scan()
    assert len(first.changed & ours) <= 2  # the host's own changes may take some budget
    assert first.deferred >= 2
    listed = first.changed & ours
    for _ in range(4):  # the rest at the next scans, two at a time at most
        later = scanner.scan().changed & ours
        assert len(later) <= 2
        assert not later & listed  # nobody twice
        listed |= later
    assert listed == ours
    holders[0].open(500)  # 800 fds, more than a whole scan reads
    third = scanner.scan()
    assert holders[0].pid in third.too_big
    assert holders[0].pid not in third.changed
    assert holders[0].pid not in scanner.scan().too_big  # said once, until it changes again
