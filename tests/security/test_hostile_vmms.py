"""VMMs that try to confuse the daemon (docs/security.md): thread names faked as
``CPU N/KVM``, and thousands of copies of their stats fds.  Each is served as what it
is, and the daemon holds one copy per stats file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.security.conftest import Daemon, counted_threads, log_of, rows
from tests.trace.conftest import requires_tracing
from vmstats.kvm.attach import cpu_index_of_threads
from vmstats.testing.hostile import FLOODER, rss_bytes, stats_fd_count, wait_for
from vmstats.testing.qemu import RawQMP, stop_process

pytestmark = [pytest.mark.kvm, requires_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")]  # fmt: skip

#: A VMM of two vCPUs (made on its main thread), then what the test asks of it.
VMM = """
import os, resource, sys, time
from vmstats.demo.vm import DemoVM
from vmstats.kvm.attach import copy_fd, stats_fd_links
vm = DemoVM(2, rate=1, qemu_layout="qemu-layout" in sys.argv)
for trick in sys.argv[1:]:
    if trick.startswith("copies-of="):  # another VMM's vCPU stats fds, copied after its own
        pid = int(trick[10:])
        pidfd = os.pidfd_open(pid)
        theirs = [copy_fd(pidfd, link.fd) for link in stats_fd_links(pid) if link.vcpu_id]
    elif trick == "fake-thread-names":  # the thread that made both vCPUs says it is CPU 0
        with open("/proc/self/comm", "w") as comm:
            comm.write("CPU 0/KVM")
    elif trick.startswith("dup="):  # thousands of copies of each stats fd
        copies = int(trick[4:])
        resource.setrlimit(resource.RLIMIT_NOFILE, (copies * 4, copies * 4))
        held = [os.dup(f.fd) for f in vm.stats_files for _ in range(copies)]
vm.start()
for trick in sys.argv[1:]:
    if trick.startswith("fork="):  # children holding every fd, the VM's control fd too
        for _ in range(int(trick[5:])):
            if os.fork() == 0:
                import ctypes
                ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL when we go
                time.sleep(600)
                os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def vmm() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*tricks: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", VMM, *tricks, "-name", "hostile"],
                                stdout=subprocess.PIPE)  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        return proc

    yield start
    for proc in started:
        stop_process(proc)


def vcpus_served(run_dir: Path, name: str) -> int:
    qmp = RawQMP(run_dir / f"{name}.qmp", timeout=10)
    try:
        qmp.negotiate()
        return len(json.loads(qmp.request(b'{"execute":"query-cpus-fast"}'))["return"])
    finally:
        qmp.close()


def test_thread_names_faked_as_cpu_0_do_not_hide_a_vcpu(
    start_daemon: Callable[..., Daemon], vmm: Callable[..., subprocess.Popen[bytes]]
) -> None:
    _proc, run_dir = start_daemon()
    vmm("fake-thread-names")
    assert wait_for((run_dir / "hostile.qmp").exists)
    assert vcpus_served(run_dir, "hostile") == 2  # both, by KVM's vcpu_ids


def test_thousands_of_copies_of_its_stats_fds_are_taken_once(
    start_daemon: Callable[..., Daemon], vmm: Callable[..., subprocess.Popen[bytes]]
) -> None:
    proc, run_dir = start_daemon()
    hostile = vmm("dup=2000")  # 6,000 stats fds in one process
    assert stats_fd_count(hostile.pid) >= 6000
    assert wait_for((run_dir / "hostile.qmp").exists)
    assert vcpus_served(run_dir, "hostile") == 2
    assert stats_fd_count(proc.pid) == 3  # the VM's and two vCPUs', not 6,000


#: A VMM that makes both its vCPUs on its main thread, and names the threads that run them
#: ``CPU N/KVM`` when told to (a line with N on its stdin), after it is served.
NAMED_LATER = """
import sys, threading
from vmstats.demo.vm import DemoVM
vm = DemoVM(2, rate=1)
names = [threading.Event(), threading.Event()]
def vcpu(index):
    names[index].wait()
    with open("/proc/thread-self/comm", "w") as comm:
        comm.write(f"CPU {index}/KVM")
    print(threading.get_native_id(), flush=True)
    threading.Event().wait()
for index in range(2):
    threading.Thread(target=vcpu, args=(index,), daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    names[int(line)].set()
"""


@requires_tracing
def test_vcpu_threads_named_after_the_vmm_is_served_are_counted_once_all_are(
    start_daemon: Callable[..., Daemon],
) -> None:
    """A VMM that makes every vCPU on one thread names the threads that run them after it
    made them (the demo does): a daemon that serves it in between counts no vCPU on the
    thread that made it (it would count nothing, for good), and counts each on its named
    thread once every one has its name."""
    vmm = subprocess.Popen([sys.executable, "-c", NAMED_LATER, "-name", "later"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert vmm.stdin is not None
        assert vmm.stdout is not None
        assert vmm.stdout.readline() == "ready\n"
        vmm.stdin.write("0\n")
        vmm.stdin.flush()
        first = int(vmm.stdout.readline())
        proc, run_dir = start_daemon()  # serves it with one vCPU thread named of two
        assert wait_for((run_dir / "later.qmp").exists)
        assert counted_threads(proc.pid) == []
        vmm.stdin.write("1\n")
        vmm.stdin.flush()
        second = int(vmm.stdout.readline())
        assert wait_for(lambda: counted_threads(proc.pid) == sorted([first, second]))
    finally:
        stop_process(vmm)


#: A VMM of two VMs (not served: its stats fds do not tell which VM is whose), the first
#: of four vCPUs each made on a thread of its own.
TWO_VMS = """
import time
from vmstats.demo.vm import DemoVM
vms = [DemoVM(4, rate=1, qemu_layout=True), DemoVM(1, rate=1)]
print("ready", flush=True)
time.sleep(600)
"""


@requires_tracing
def test_copies_of_another_vms_vcpus_do_not_get_its_exits_counted_for_this_one(
    start_daemon: Callable[..., Daemon], vmm: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """A VMM of two vCPUs that also holds copies of another VMM's vCPU stats fds (passed
    to it, or copied as root) is served with them, but exit reasons are counted on its
    own threads only, never on the threads of the other VMM that made the copies: their
    exits are the other VM's.  (The other VMM runs two VMs and is not served itself, so
    nothing else counts its threads.)"""
    other = subprocess.Popen([sys.executable, "-c", TWO_VMS], stdout=subprocess.PIPE)
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"ready\n"
        hostile = vmm("qemu-layout", f"copies-of={other.pid}")  # its vCPUs 0, 1 and 2, 3
        proc, run_dir = start_daemon()
        assert wait_for(lambda: (run_dir / "hostile.qmp").exists())
        assert vcpus_served(run_dir, "hostile") == 4
        own = sorted(cpu_index_of_threads(hostile.pid))
        assert len(own) == 2
        assert wait_for(lambda: counted_threads(proc.pid) == own)
    finally:
        stop_process(other)


@pytest.fixture
def flooders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Eight processes holding all the fds they may (20,000 here) and changing them."""
    started = [subprocess.Popen([sys.executable, "-c", FLOODER], stdout=subprocess.PIPE)
               for _ in range(8)]  # fmt: skip
    for proc in started:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    yield started
    for proc in started:
        stop_process(proc)


def test_floods_of_fds_and_fds_passed_to_many_processes_delay_no_vm(
    start_daemon: Callable[..., Daemon],
    vmm: Callable[..., subprocess.Popen[bytes]],
    flooders: list[subprocess.Popen[bytes]],
) -> None:
    """Processes that fill their fd tables and keep changing them (more fds than a scan
    reads, at every scan), and twenty children holding a VMM's fds (its control fd too):
    the VMM is served, once, its children are not, each scan reads a bounded number of
    fds (fewest first: the VMM's come before the floods'), and the log says so once."""
    proc, run_dir = start_daemon()
    parent = vmm("fork=20")
    assert wait_for((run_dir / "hostile.qmp").exists, timeout=30)
    assert vcpus_served(run_dir, "hostile") == 2
    assert stats_fd_count(proc.pid) == 3  # the VMM's, copied once
    assert wait_for(lambda: bool(rows(run_dir)))  # written after the socket
    assert [row["pid"] for row in rows(run_dir).values()] == [parent.pid]  # not its 20 children
    assert rss_bytes(proc.pid) < 150 << 20
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log = log_of(run_dir)
    assert proc.returncode == 0
    assert log.count("looked into at the next scans") == 1, log
    assert "Traceback" not in log


class HostileQmp:
    """A unix socket at ``path`` in a ``--qmp`` glob that answers as ``behaviour`` says:
    ``silent`` accepts and never greets, ``flood`` sends bytes without end and no newline,
    ``nonsense`` sends a line that is not QMP."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.behaviour = behaviour
        self.held: list[socket.socket] = []
        self.sent = 0
        self.accepted = 0  # the daemon's probes so far
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)
            self.accepted += 1
            try:
                if self.behaviour == "nonsense":
                    connection.sendall(b"hello, I am not QEMU\n")
                elif self.behaviour == "flood":
                    chunk = b"x" * (1 << 20)
                    while True:
                        connection.sendall(chunk)
                        self.sent += len(chunk)
            except OSError:
                continue  # the daemon gave up on us

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_hostile_qmp_sockets_cost_bounded_time_and_memory_and_nobody_else_service(
    start_daemon: Callable[..., Daemon],
    vmm: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Sockets in a ``--qmp`` glob that never greet, flood without a newline, or talk
    nonsense: each probe is bounded (the timeout, QEMU's 64 MiB line), says why once, and
    the VMs found by their fds are served throughout."""
    folder = tmp_path / "qmp"
    folder.mkdir()
    hostile = [HostileQmp(folder / f"{kind}.sock", kind)
               for kind in ("silent", "flood", "nonsense")]  # fmt: skip
    try:
        proc, run_dir = start_daemon("--qmp", str(folder / "*.sock"), "--qmp-timeout", "2")
        vmm()  # a VM found by its fds
        assert wait_for((run_dir / "hostile.qmp").exists, timeout=30)
        peak = [0]

        def three_scans_served() -> bool:
            """Each hostile socket probed thrice (three scans), the VM served meanwhile."""
            peak[0] = max(peak[0], rss_bytes(proc.pid))
            assert vcpus_served(run_dir, "hostile") == 2
            return all(server.accepted >= 3 for server in hostile)

        assert wait_for(three_scans_served, timeout=120)
        # a 64 MiB line at most, not the flood: unbounded, 2 s of it is gigabytes
        assert peak[0] < 300 << 20, peak[0]
        served = {path.name for path in run_dir.glob("*.qmp")}
        assert served == {"hostile.qmp"}  # none of the hostile sockets became a VM
    finally:
        for server in hostile:
            server.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log = log_of(run_dir)
    assert proc.returncode == 0
    for kind in ("silent", "flood", "nonsense"):  # said once, not at every scan
        assert log.count(f"{kind}.sock not used for now") == 1, log
    assert "is not a QMP server" in log
    assert "sent a line longer than QEMU's 64 MiB limit of a message" in log
    assert "Traceback" not in log


def test_a_symbolic_link_in_a_qmp_glob_is_not_followed(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Whoever may write in a globbed directory could point a link at a socket they may
    not open themselves; the daemon, which may, must not talk to it for them.  The link
    is skipped and said once; the directory's own sockets are probed."""
    folder, elsewhere = tmp_path / "qmp", tmp_path / "private"
    folder.mkdir()
    elsewhere.mkdir()
    target = HostileQmp(elsewhere / "theirs.sock", "nonsense")
    own = HostileQmp(folder / "own.sock", "nonsense")
    (folder / "linked.sock").symlink_to(elsewhere / "theirs.sock")
    try:
        proc, run_dir = start_daemon("--qmp", str(folder / "*.sock"), "--qmp-timeout", "2")
        assert wait_for(lambda: own.accepted >= 3, timeout=60)  # three scans at least
        assert target.accepted == 0
    finally:
        target.close()
        own.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log = log_of(run_dir)
    assert log.count("linked.sock is a symbolic link that a glob matched: not followed") == 1
