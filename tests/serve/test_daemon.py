"""``vmstats serve`` with real processes: the demo VM and a QEMU 10.0, found by the stats
fds they keep, a QEMU 7.2 forwarded through its QMP socket, all served read-only, and
forgotten when they exit."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.qmp.test_cli_clients import FakePeer
from tests.serve.conftest import Daemon, counted_threads, log_of, rows
from tests.serve.users import (
    GROUP,
    USER_UID,
    as_nobody,
    connect_as_nobody,
    kvm_for_group,
    named_vmm,
)
from tests.trace.conftest import TRACING_REASON, requires_tracing
from vmstats import caps
from vmstats.kvm.attach import cpu_index_of_threads
from vmstats.serve.discover import vm_name
from vmstats.testing.hostile import (
    DemoServer,
    fd_count,
    kill,
    requests_until_closed,
    rss_bytes,
    wait_for,
)
from vmstats.testing.qemu import QemuVM, RawQMP, qemu_unavailable_reason, stop_process
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

QEMU10_REASON = qemu10_unavailable_reason()
QEMU_REASON = qemu_unavailable_reason()
pytestmark = [pytest.mark.kvm, requires_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")]  # fmt: skip


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon()


def ask(path: Path, request: bytes) -> bytes:
    """One request on a connection of its own (a QEMU socket is then free again)."""
    qmp = RawQMP(path, timeout=10)
    qmp.negotiate()
    try:
        return qmp.request(request)
    finally:
        qmp.close()


def sockets(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.qmp"))


def gone(path: Path) -> bool:
    return not path.exists()


def socket_of(run_dir: Path, pid: int) -> Path:
    """The socket the daemon serves the VM of ``pid`` on.  The daemon serves every VM of
    the host, so the tests look for their own VMs: a developer's host may run others."""
    return run_dir / f"{vm_name(pid)}.qmp"


def control_fds(pid: int) -> list[str]:
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (
            target.startswith(("anon_inode:kvm-vm", "anon_inode:kvm-vcpu"))
            and "stats" not in target
        ):
            out.append(target)
    return out


def test_the_demo_vm_is_found_served_read_only_and_forgotten(
    daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, run_dir = daemon
    assert wait_for(lambda: (run_dir / "vms.json").exists())
    baseline = fd_count(proc.pid)
    with DemoServer(vcpus=2, rate=0.001) as demo:  # still counters: replies comparable
        served = socket_of(run_dir, demo.vm_pid)
        assert wait_for(served.exists)
        assert stat.S_IMODE(served.stat().st_mode) == 0o660  # never world-accessible
        request = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
        ours, theirs = RawQMP(served), RawQMP(demo.path)
        ours.negotiate()
        theirs.negotiate()
        assert ours.request(request) == theirs.request(request)  # the same kernel values
        for command in (
            b'{"execute":"quit"}',
            b'{"execute":"stop"}',
            b'{"execute":"cont"}',
            b'{"execute":"system_reset"}',
            b'{"execute":"migrate","arguments":{"uri":"x"}}',
        ):
            assert b'"CommandNotFound"' in ours.request(command)
        hmp = ours.request(
            b'{"execute":"human-monitor-command","arguments":{"command-line":"quit"}}'
        )
        assert hmp == b'{"return": "unknown command: \'quit\'\\r\\n"}\r\n'
        assert control_fds(proc.pid) == []  # only stats fds are ever held
        listing = subprocess.run([sys.executable, "-m", "vmstats", "list", str(run_dir)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"{demo.vm_pid}" in listing
        assert "fds (vm, vcpu)" in listing
        kill(demo.vm_pid)
        assert wait_for(lambda: not served.exists(), timeout=5)  # removed with its VM
        replies, closed = requests_until_closed(ours, request)
        assert closed  # errors, then EOF
        assert all(b"the VM is gone" in reply for reply in replies)
        ours.close()
        theirs.close()
    assert wait_for(lambda: fd_count(proc.pid) == baseline)  # every fd of the VM let go


def test_a_vm_that_starts_is_served_at_once_not_at_the_next_scan(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Scans ten minutes apart: a VM that starts is served all the same, soon after its
    VMM opens /dev/kvm (what wakes the daemon), and forgotten when it exits."""
    proc, run_dir = start_daemon("--scan-interval", "600")
    assert wait_for((run_dir / "vms.json").exists)  # the first scan is over
    with DemoServer(vcpus=1) as demo:
        served = socket_of(run_dir, demo.vm_pid)
        assert wait_for(served.exists, timeout=30)
        kill(demo.vm_pid)
        assert wait_for(lambda: not served.exists(), timeout=10)
    assert proc.poll() is None


@pytest.mark.qemu
@pytest.mark.skipif(QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")
def test_qemu_10_is_found_by_its_fds_named_and_never_kicked(
    daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    _, run_dir = daemon
    with qemu10_vm(3, extra_args=["-name", "guest=web1,debug-threads=on"]) as vm:
        assert wait_for(lambda: (run_dir / "web1.qmp").exists())
        ours = RawQMP(run_dir / "web1.qmp")
        ours.negotiate()
        kicks = b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":[{"provider":"kvm","names":["signal_exits"]}]}}'
        before = json.loads(ours.request(kicks))["return"]
        assert [r["qom-path"] for r in before][::-1] == [
            "/machine/unattached/device[0]",
            "/machine/unattached/device[2]",
            "/machine/unattached/device[3]",
        ]  # QEMU's pc machine paths, vCPU 0 first
        for _ in range(100):
            ours.request(b'{"execute":"query-stats","arguments":{"target":"vcpu"}}')
        after = json.loads(ours.request(kicks))["return"]
        assert after == before  # 100 queries, no vCPU kicked
        theirs = vm.connect()
        exits = b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":[{"provider":"kvm","names":["exits"]}]}}'
        first = json.loads(ours.request(exits))["return"]
        middle = json.loads(theirs.request(exits))["return"]
        last = json.loads(ours.request(exits))["return"]
        for a, b, c in zip(first, middle, last, strict=True):  # within the counting between
            assert a["stats"][0]["value"] <= b["stats"][0]["value"] <= c["stats"][0]["value"]
        assert (
            json.loads(ours.request(b'{"execute":"query-stats","arguments":{"target":"vm"}}'))[
                "return"
            ]
            == []
        )
        ours.close()
        theirs.close()


#: Requests whose replies a forwarded QEMU 7.2 must give through us byte for byte.
FORWARDED = [
    b'{"execute":"query-stats-schemas"}',
    b'{"execute":"query-stats-schemas","arguments":{"provider":"kvm"},"id":1}',
    b'{"execute":"query-stats","arguments":{"target":"vm"}}',
    b'{"execute":"query-stats","arguments":{"target":"vcpu"}}',
    b'{"execute":"query-stats","arguments":{"target":"vcpu","vcpus":["/machine/unattached/device[2]"],'
    b'"providers":[{"provider":"kvm","names":["exits","halt_wait_hist"]}]},"id":[2.50,"x"]}',
    b'{"execute":"query-stats","arguments":{"target":"nope"}}',
    b'{"execute":"query-stats","arguments":{"target":"vm","vcpus":[]}}',
    b'{"execute":"query-cpus-fast"}',
    b'{"execute":"query-name"}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats vcpu"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats vm pages_4k,exits"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats vcpu","cpu-index":1}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats bogus"}}',
]  # fmt: skip


@pytest.mark.qemu
@pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU 7.2: {QEMU_REASON}")
def test_qemu_72_is_forwarded_byte_for_byte_and_its_socket_stays_free(
    start_daemon: Callable[..., Daemon],
) -> None:
    # Paused: its counters stand still, so two reads give the same bytes.
    with QemuVM(2, paused=True, extra_args=["-name", "old72"]) as vm:
        proc, run_dir = start_daemon("--qmp", str(vm.qmp_path.parent / "*.sock"),
                                     "--qmp-timeout", "1")  # fmt: skip
        assert wait_for(lambda: (run_dir / "old72.qmp").exists())
        served = run_dir / "old72.qmp"
        for request in FORWARDED:
            ours = ask(served, request)
            assert ours == ask(vm.qmp_path, request), request  # and QEMU's socket is free
        ours_conn = RawQMP(served)
        ours_conn.negotiate()
        assert b'"CommandNotFound"' in ours_conn.request(b'{"execute":"stop"}')
        held = vm.connect()  # another tool holds QEMU's monitor: we say so, after our
        # --qmp-timeout (the words come from that timeout's expiry), not never
        reply = ours_conn.request(b'{"execute":"query-stats","arguments":{"target":"vm"}}')
        assert b"is another client connected?" in reply
        top = subprocess.run([sys.executable, "-m", "vmstats", "top", str(served), "-1", "-s",
                              "0.2"], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert top.returncode == 1  # through the daemon: the same words, no command named
        assert top.stderr == (f"vmstats top: old72: the VM's QEMU monitor: no answer from "
                              f"{vm.qmp_path} within 1 s: is another client connected? "
                              "(QEMU's monitor serves one client at a time)\n")  # fmt: skip
        held.close()
        vm_stats = b'{"execute":"query-stats","arguments":{"target":"vm"}}'
        # and back, once QEMU has seen the other client go (on a loaded machine it may
        # take longer than our 1 s: a CI run saw the busy error once more)
        assert wait_for(lambda: ours_conn.request(vm_stats).startswith(b'{"return"'))
        assert ours_conn.request(vm_stats) == ask(vm.qmp_path, vm_stats)
        assert vm.proc is not None
        assert wait_for(lambda: "old72" in rows(run_dir))
        assert [(r["name"], r["source"]) for r in rows(run_dir).values()
                if r["pid"] == vm.proc.pid] == [("old72", "QMP (forwarded)")]  # fmt: skip
        assert control_fds(proc.pid) == []
        vm.stop()
        assert wait_for(lambda: not served.exists(), timeout=5)
        replies, closed = requests_until_closed(ours_conn, vm_stats)
        assert closed  # its clients are closed
        assert all(b"the VM is gone" in reply for reply in replies)
        ours_conn.close()


@pytest.mark.qemu
@pytest.mark.skipif(QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")
def test_qemu_10_with_a_socket_gives_vm_stats_names_paths_and_hot_plugged_vcpus(
    start_daemon: Callable[..., Daemon],
) -> None:
    with qemu10_vm(1, extra_args=["-name", "new10"], max_vcpus=2) as vm:
        _, run_dir = start_daemon("--qmp", str(vm.qmp_path))
        served = run_dir / "new10.qmp"
        assert wait_for(lambda: b"QMP (vm)" in (run_dir / "vms.json").read_bytes()
                        if (run_dir / "vms.json").exists() else False)  # fmt: skip
        vm_stats = json.loads(ask(served, b'{"execute":"query-stats","arguments":{"target":"vm"}}'))
        theirs = json.loads(
            ask(vm.qmp_path, b'{"execute":"query-stats","arguments":{"target":"vm"}}')
        )
        assert [s["name"] for s in vm_stats["return"][0]["stats"]] == [
            s["name"] for s in theirs["return"][0]["stats"]
        ]  # VM-level stats, from QEMU's own VM stats fd
        hmp = ask(
            served,
            b'{"execute":"human-monitor-command","arguments":{"command-line":"info stats vm pages_4k"}}',
        )
        assert hmp.startswith(b'{"return": "provider: kvm\\r\\n    pages_4k (instant): ')
        assert ask(served, b'{"execute":"query-name"}') == b'{"return": {"name": "new10"}}\r\n'
        added = ask(vm.qmp_path, b'{"execute":"device_add","arguments":{"driver":"qemu64-x86_64-cpu",'
                                 b'"socket-id":0,"core-id":1,"thread-id":0,"id":"cpu1"}}')  # fmt: skip
        assert added == b'{"return": {}}\r\n'

        def paths() -> list[str]:
            reply = json.loads(ask(served, b'{"execute":"query-cpus-fast"}'))["return"]
            return [c["qom-path"] for c in reply]

        assert wait_for(lambda: paths() == ["/machine/unattached/device[0]",
                                            "/machine/peripheral/cpu1"])  # fmt: skip
        theirs_cpus = json.loads(ask(vm.qmp_path, b'{"execute":"query-cpus-fast"}'))["return"]
        ours_cpus = json.loads(ask(served, b'{"execute":"query-cpus-fast"}'))["return"]
        assert [(c["cpu-index"], c["thread-id"]) for c in ours_cpus] == [
            (c["cpu-index"], c["thread-id"]) for c in theirs_cpus
        ]
        vcpus = json.loads(ask(served, b'{"execute":"query-stats","arguments":{"target":"vcpu",'
                                       b'"providers":[{"provider":"kvm","names":["signal_exits"]}]}}'))  # fmt: skip
        assert sorted(r["qom-path"] for r in vcpus["return"]) == sorted(paths())


@pytest.mark.qemu
@pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU 7.2: {QEMU_REASON}")
def test_as_non_root_it_refuses_fd_discovery_and_serves_qmp_sockets(
    nobody_env: dict[str, str],
) -> None:
    parent = Path(tempfile.mkdtemp(prefix="vmstats-nobody-"))
    os.chmod(parent, 0o777)
    run_dir = parent / "run"
    command = ["/usr/bin/python3", "-m", "vmstats", "serve", "--run-dir", str(run_dir),
               "--scan-interval", "0.3"]  # fmt: skip
    try:
        refused = subprocess.run(command, capture_output=True, text=True, env=nobody_env,
                                 preexec_fn=as_nobody, timeout=60)  # fmt: skip
        assert refused.returncode == 1
        assert "needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (root has them)" in refused.stderr
        assert "Traceback" not in refused.stderr
        with QemuVM(1, paused=True, extra_args=["-name", "mine"]) as vm:
            os.chmod(vm.qmp_path.parent, 0o755)
            os.chmod(vm.qmp_path, 0o666)  # this user's own QEMU, as it were
            log = parent / "serve.log"
            with log.open("w") as stderr:
                proc = subprocess.Popen([*command, "--qmp", str(vm.qmp_path)], env=nobody_env,
                                        stderr=stderr, preexec_fn=as_nobody)  # fmt: skip
            try:
                assert wait_for(lambda: (run_dir / "mine.qmp").exists())
                request = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
                assert ask(run_dir / "mine.qmp", request) == ask(vm.qmp_path, request)
            finally:
                assert stop_process(proc) == 0, log.read_text()
            assert "no CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: VMs are not" in log.read_text()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize(
    ("qmp", "kept"),
    [(False, ["CAP_CHOWN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]),
     (True, ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]),
     ("exits", ["CAP_CHOWN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_PERFMON",
                "CAP_BPF"])],
)  # fmt: skip
def test_once_listening_the_daemon_keeps_only_the_capabilities_its_work_needs(
    start_daemon: Callable[..., Daemon], tmp_path: Path, qmp: bool | str, kept: list[str]
) -> None:
    """Root's other capabilities serve only the start (the run directory, a low port):
    dropped for good once the daemon listens; CAP_DAC_OVERRIDE only while QMP sockets
    are given (connecting to one needs write access to it), CAP_PERFMON and CAP_BPF only
    while exit reasons are counted (the default, where they can be)."""
    if qmp == "exits" and TRACING_REASON is not None and os.geteuid() != 0:
        pytest.skip(f"exit reasons cannot be counted here: {TRACING_REASON}")
    options = ["--qmp", str(tmp_path / "*.sock")] if qmp is True else []
    options += [] if qmp == "exits" else ["--tracepoints", "none"]
    proc, run_dir = start_daemon(*options)
    assert wait_for((run_dir / "vms.json").exists)
    assert wait_for(lambda: caps.names(caps.sets(proc.pid)["CapPrm"]) == kept)
    held = caps.sets(proc.pid)
    assert caps.names(held["CapEff"]) == kept
    assert held["CapInh"] == held.get("CapAmb", 0) == 0


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="the iterators are loaded with root's privileges")
def test_a_daemon_that_gave_up_cap_bpf_still_lists_in_one_pass_with_what_it_loaded(
    start_daemon: Callable[..., Daemon],
) -> None:
    """The iterators are loaded before the capabilities go: with ``--tracepoints none``
    the daemon drops CAP_BPF and CAP_PERFMON, and its first scan (every process of the
    host changed: many) still lists them in one pass, not through /proc."""
    proc, run_dir = start_daemon("--tracepoints", "none")
    assert wait_for((run_dir / "vms.json").exists)  # written at the end of the first scan
    assert "CAP_BPF" not in caps.names(caps.sets(proc.pid)["CapPrm"])
    assert "listed through /proc" not in log_of(run_dir)


@pytest.mark.qemu
@pytest.mark.skipif(QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv (util-linux)")
def test_with_two_capabilities_as_nobody_it_serves_qemu_10_by_its_fds(
    nobody_env: dict[str, str],
) -> None:
    """Fd discovery needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, not root: uid 65534
    with those two (ambient, as a systemd unit gives them) finds a root QEMU 10.0 and
    serves its vCPUs."""
    parent = Path(tempfile.mkdtemp(prefix="vmstats-ptrace-"))
    os.chmod(parent, 0o777)
    run_dir = parent / "run"
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--inh-caps=-all,+sys_ptrace,+dac_read_search",
               "--ambient-caps=+sys_ptrace,+dac_read_search",
               "--bounding-set=-all,+sys_ptrace,+dac_read_search", "/usr/bin/python3", "-m", "vmstats", "serve",
               "--run-dir", str(run_dir), "--scan-interval", "0.3"]  # fmt: skip
    log = parent / "serve.log"
    try:
        with qemu10_vm(2, extra_args=["-name", "guest=ptrace10"]) as vm:
            with log.open("w") as stderr:
                proc = subprocess.Popen(command, env=nobody_env, stderr=stderr)
            try:
                served = run_dir / "ptrace10.qmp"
                assert wait_for(served.exists), log.read_text()
                request = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
                reply = json.loads(ask(served, request))["return"]
                assert len(reply) == 2
                held = caps.names(caps.sets(proc.pid)["CapEff"])
                assert held == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
                assert os.stat(served).st_uid == 65534
                pid = vm.proc.pid if vm.proc is not None else -1
                assert wait_for(
                    lambda: (
                        pid
                        in {row["pid"] for row in json.loads((run_dir / "vms.json").read_text())}
                    )
                )  # written after the socket: wait
            finally:
                assert stop_process(proc) == 0
        assert "Traceback" not in log.read_text()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_users_vm_is_namespaced_theirs_and_cannot_take_a_system_vms_name(
    start_daemon: Callable[..., Daemon], nobody_env: dict[str, str]
) -> None:
    """An ordinary user's VMM calling itself ``db1`` first does not get the name: it is
    ``USER~db1``, and a root VMM started later is ``db1``.  The user's socket is theirs
    and the group's; root's is the group's only; ``vmstats list`` shows the user theirs."""
    import pwd

    try:
        user = pwd.getpwuid(USER_UID).pw_name
    except KeyError:
        user = str(USER_UID)
    parent = Path(tempfile.mkdtemp(prefix="vmstats-owners-"))  # others may pass through
    os.chmod(parent, 0o755)
    run_dir = parent / "run"
    start_daemon("--group", str(GROUP), "--run-dir", str(run_dir))
    with kvm_for_group() as kvm:

        def as_user() -> None:
            os.setgroups([kvm])
            os.setgid(USER_UID)
            os.setuid(USER_UID)

        theirs = named_vmm("db1", nobody_env, as_user)
        try:
            assert wait_for((run_dir / f"{user}~db1.qmp").exists)
            ours = named_vmm("db1")
            try:

                def served() -> dict[str, int]:  # vms.json is written after the socket
                    return {r["name"]: r["pid"]
                            for r in json.loads((run_dir / "vms.json").read_text())}  # fmt: skip

                assert wait_for(lambda: {"db1", f"{user}~db1"} <= set(served()))
                rows = served()
                assert rows["db1"] == ours.pid
                assert rows[f"{user}~db1"] == theirs.pid
                mine = run_dir / f"{user}~db1.qmp"
                assert (mine.stat().st_uid, mine.stat().st_gid) == (USER_UID, GROUP)
                assert stat.S_IMODE(mine.stat().st_mode) == 0o660
                assert connect_as_nobody(mine, [], USER_UID).stdout.startswith('{"QMP"')
                assert "Permission denied" in connect_as_nobody(run_dir / "db1.qmp", [],
                                                                USER_UID).stdout  # fmt: skip
                assert "Permission denied" in connect_as_nobody(mine, []).stdout  # 65534
                assert connect_as_nobody(mine, [GROUP]).stdout.startswith('{"QMP"')

                def as_user() -> None:
                    os.setgroups([])
                    os.setgid(USER_UID)
                    os.setuid(USER_UID)

                listing = subprocess.run(["/usr/bin/python3", "-m", "vmstats", "list",
                                          str(run_dir)], capture_output=True, text=True,
                                         env=nobody_env, preexec_fn=as_user, timeout=60)  # fmt: skip
                assert listing.returncode == 0, listing.stderr
                names = [line.split()[0] for line in listing.stdout.splitlines()[1:]]
                assert names == [f"{user}~db1"]  # theirs only
            finally:
                stop_process(ours)
        finally:
            stop_process(theirs)


def test_two_vms_of_one_name_are_told_apart_and_a_name_let_go_is_free_again(
    daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    """The second VMM calling itself ``twin`` is served as ``twin-PID``; once the first
    exits, a third one gets ``twin`` itself."""
    _, run_dir = daemon
    first = named_vmm("twin")
    try:
        assert wait_for((run_dir / "twin.qmp").exists)
        second = named_vmm("twin")
        try:
            assert wait_for((run_dir / f"twin-{second.pid}.qmp").exists)
            stop_process(first)
            assert wait_for(lambda: not (run_dir / "twin.qmp").exists())
            third = named_vmm("twin")
            try:
                assert wait_for((run_dir / "twin.qmp").exists)
                assert ask(run_dir / "twin.qmp", b'{"execute":"query-name"}') == (
                    b'{"return": {"name": "twin"}}\r\n')  # fmt: skip
                assert not (run_dir / f"twin-{third.pid}.qmp").exists()
            finally:
                stop_process(third)
        finally:
            stop_process(second)
    finally:
        stop_process(first)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_only_the_group_may_connect() -> None:
    parent = Path(tempfile.mkdtemp(prefix="vmstats-serve-"))
    os.chmod(parent, 0o755)
    run_dir = parent / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir", str(run_dir),
                             "--scan-interval", "0.3", "--group", str(GROUP)])  # fmt: skip
    try:
        with DemoServer(vcpus=1, rate=0.001) as demo:
            served = socket_of(run_dir, demo.vm_pid)
            assert wait_for(served.exists)
            assert served.stat().st_gid == GROUP
            assert run_dir.stat().st_gid == GROUP
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o751  # passed through, not listed
            assert wait_for(lambda: bool(rows(run_dir)))  # written after the socket
            assert stat.S_IMODE((run_dir / "vms.json").stat().st_mode) == 0o640
            member = connect_as_nobody(served, [GROUP])
            assert member.returncode == 0, member
            assert member.stdout.startswith('{"QMP"'), member
            stranger = connect_as_nobody(served, [])
            assert stranger.returncode == 1
            assert "Permission denied" in stranger.stdout
    finally:
        assert stop_process(proc) == 0
        shutil.rmtree(parent, ignore_errors=True)


def test_config_file_and_sighup(tmp_path: Path) -> None:
    config = tmp_path / "vmstats.toml"
    run_dir = tmp_path / "run"
    config.write_text(f'run-dir = "{run_dir}"\nscan-interval = 0.3\nidle-timeout = 60\n')
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--config",
                                 str(config)], stderr=stderr)  # fmt: skip
    try:
        assert wait_for(lambda: (run_dir / "vms.json").exists())  # the run-dir came from it
        config.write_text("scan-interval = [")  # broken: kept running with what it had
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "keeping the settings in use" in log.read_text())
        config.write_text("scan-interval = 0.5\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: f"{config} reread" in log.read_text())
        assert proc.poll() is None
    finally:
        assert stop_process(proc) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--config", str(bad),
                          "--once"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2
    assert "unknown settings colour" in out.stderr
    for text, problem in [("scan-interval = 'soon'", "scan-interval: "),
                          ("scan-interval = -1", "scan-interval: "),
                          ("qmp = '/run/qemu.sock'", "qmp: must be a list of strings"),
                          ("qmp-timeout = [1]", "qmp-timeout: must be a number")]:  # fmt: skip
        bad.write_text(text + "\n")
        out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--config", str(bad),
                              "--once"], capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 2, (text, out.stderr)
        assert problem in out.stderr, (text, out.stderr)
        assert "Traceback" not in out.stderr


CYCLES = int(os.environ.get("VMSTATS_SERVE_CYCLES", "20"))


def test_vms_that_come_and_go_leave_no_fd_or_memory_behind(
    daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    """Set VMSTATS_SERVE_CYCLES=200 for the issue's full run (about 4 minutes)."""
    proc, run_dir = daemon
    assert wait_for(lambda: (run_dir / "vms.json").exists())
    baseline_fds, baseline_rss = fd_count(proc.pid), rss_bytes(proc.pid)
    for _ in range(CYCLES):
        with DemoServer(vcpus=1, rate=0.001) as demo:
            served = socket_of(run_dir, demo.vm_pid)
            assert wait_for(served.exists)
        assert wait_for(functools.partial(gone, served), timeout=5)
    assert wait_for(lambda: fd_count(proc.pid) == baseline_fds)
    assert rss_bytes(proc.pid) - baseline_rss < 10 << 20


def test_two_vms_in_one_process_are_named_not_mixed_up(tmp_path: Path) -> None:
    """The kernel gives the stats fds of two VMs in one process the same names and ids:
    the daemon says so instead of serving one VM made of both."""
    script = ("import time\nfrom vmstats.demo.vm import DemoVM\n"
              "vms = [DemoVM(1), DemoVM(2)]\nprint('ready', flush=True)\ntime.sleep(120)\n")  # fmt: skip
    two = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert two.stdout is not None
        assert two.stdout.readline() == "ready\n"
        out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--once", "--run-dir",
                              str(tmp_path / "run")], capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"process {two.pid} runs 2 VMs" in out.stderr
        assert str(two.pid) not in out.stdout
    finally:
        two.kill()
        two.wait()


def test_a_second_daemon_on_the_same_run_dir_refuses_and_leaves_the_first_alone(
    daemon: Daemon,
) -> None:
    first, run_dir = daemon
    assert wait_for(lambda: (run_dir / "vms.json").exists())
    second = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--run-dir", str(run_dir),
                             "--scan-interval", "0.3"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert second.returncode == 1
    assert second.stderr == (f"vmstats serve: {run_dir} is in use by another vmstats serve "
                             f"(process {first.pid}): give this one another --run-dir\n")  # fmt: skip
    assert (run_dir / "vms.json").exists()  # the first one's, untouched
    assert first.poll() is None


@pytest.mark.parametrize("command", [["serve", "--metrics"], ["exporter", "/", "--listen"]])
def test_a_metrics_address_in_use_is_one_line_and_exit_1(tmp_path: Path,
                                                         command: list[str]) -> None:  # fmt: skip
    import socket as socketlib

    with socketlib.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "vmstats", *command, f"127.0.0.1:{port}",
                              *(["--run-dir", str(tmp_path / "run")] if command[0] == "serve"
                                else [])], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use\n")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "vms.json").exists()


def test_the_log_says_what_is_served_and_why_it_stops_being(tmp_path: Path) -> None:
    """At the default level (a service's log is INFO): start-up, each VM served, a VM that
    exits, and at shutdown VMs that still run, each in its own words."""
    run_dir, log = tmp_path / "run", tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                                 str(run_dir), "--scan-interval", "0.3"], stderr=stderr)  # fmt: skip
    try:
        with DemoServer(vcpus=1, rate=0.001) as first, DemoServer(vcpus=1, rate=0.001) as second:
            assert wait_for(socket_of(run_dir, first.vm_pid).exists)
            assert wait_for(socket_of(run_dir, second.vm_pid).exists)
            kill(first.vm_pid)
            assert wait_for(lambda: f"(process {first.vm_pid}) exited" in log.read_text())
            assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    text = log.read_text()
    assert f"vmstats: INFO: serving the VMs of this host in {run_dir}" in text
    assert f"(process {first.vm_pid}) exited: no longer served" in text
    assert (f"(process {second.vm_pid}) still runs, but vmstats serve stops: no longer served"
            in text)  # fmt: skip
    for demo in (first, second):
        assert re.search(rf"INFO: serving \S+ \(process {demo.vm_pid}, fds", text), text


def stats_links(pid: int) -> list[str]:
    """The KVM stats fds ``pid`` holds, by link name."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("anon_inode:kvm-") and "stats" in target:
                out.append(target)
    return sorted(out)


def test_stats_fds_that_the_vmm_replaces_are_taken_again(
    daemon: Daemon,
) -> None:
    """A VMM that recreates its VM (a confidential guest's reset) closes its stats fds
    and opens new ones at the same numbers: the daemon notices that its copies are no
    longer what the VMM holds and serves the new VM.  A scan that catches the new VM
    before its vCPU serves no vCPU for now, and the vCPU at a scan after it is made (with
    no new thread of the VMM to tell of it)."""
    proc, run_dir = daemon
    vmm = subprocess.Popen([sys.executable, "-m", "vmstats.testing.resetting_vmm"],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert vmm.stdout is not None
        assert vmm.stdout.readline() == "ready\n"
        served = socket_of(run_dir, vmm.pid)
        assert wait_for(served.exists)
        request = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'

        def vcpus() -> int:
            return len(json.loads(ask(served, request))["return"])

        assert wait_for(lambda: vcpus() == 1)
        os.kill(vmm.pid, signal.SIGUSR1)
        assert vmm.stdout.readline() == "vm\n"
        assert wait_for(lambda: vcpus() == 0)  # the new VM's fd taken, the old vCPU's let go
        assert len(stats_links(proc.pid)) == 1  # the new VM's; the old VM's closed
        os.kill(vmm.pid, signal.SIGUSR1)
        assert vmm.stdout.readline() == "reset\n"
        assert wait_for(lambda: vcpus() == 1)  # the new VM's vCPU
        assert len(stats_links(proc.pid)) == 2  # the new VM's and its vCPU's
    finally:
        stop_process(vmm)


NAMED = (b'{"execute":"query-stats","arguments":{"target":"vcpu",'
         b'"providers":[{"provider":"tracepoints"}]}}')  # fmt: skip


@requires_tracing
def test_exit_reasons_are_served_recorded_and_let_go_with_the_vm(
    daemon: tuple[subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    """The daemon counts each served vCPU's exits by reason (provider ``tracepoints``):
    for a client that names it, in HMP, ``top`` and a recording; a client that names no
    provider gets QEMU's reply; the counting goes with the VM."""
    proc, run_dir = daemon
    with DemoServer(vcpus=2, rate=200, extra=["--tracepoints", "none"]) as demo:
        served = socket_of(run_dir, demo.vm_pid)
        assert wait_for(served.exists)

        def counted() -> dict[str, dict[str, int]]:
            reply = json.loads(ask(served, NAMED))["return"]
            return {r["qom-path"]: {s["name"]: s["value"] for s in r["stats"]} for r in reply}

        def rounds(v: dict[str, int]) -> bool:
            """8 OUTs and a HLT a round; the counting began at any point of one, and may
            be read in the middle of another: a round's worth either way."""
            halts = v["kvm_userspace_exit(HLT)"]
            return halts >= 2 and 8 * (halts - 1) <= v["kvm_userspace_exit(IO)"] <= 8 * (halts + 1)

        seen: list[dict[str, dict[str, int]]] = []

        def settled() -> bool:
            seen[:] = [counted()]
            return len(seen[0]) == 2 and all(map(rounds, seen[0].values()))

        assert wait_for(settled), seen
        assert b"tracepoints" not in ask(served, b'{"execute":"query-stats","arguments":'
                                                 b'{"target":"vcpu"}}')  # fmt: skip
        hmp = ask(served, b'{"execute":"human-monitor-command","arguments":{"command-line":'
                          b'"info stats vcpu * tracepoints"}}')  # fmt: skip
        assert b"kvm_userspace_exit(IO) (cumulative): " in hmp
        recording = tmp_path / "exits.jsonl"
        subprocess.run([sys.executable, "-m", "vmstats", "record", "-o", str(recording), "-s",
                        "0.2", "--duration", "1", str(served)], check=True, timeout=60)  # fmt: skip
        replayed = subprocess.run([sys.executable, "-m", "vmstats", "top", "--replay",
                                   str(recording), "-1"], capture_output=True, text=True,
                                  check=True, timeout=60).stdout  # fmt: skip
        assert "vcpu.kvm_userspace_exit(IO)" in replayed
        assert counted_threads(proc.pid) == sorted(cpu_index_of_threads(demo.vm_pid))
        kill(demo.vm_pid)
        assert wait_for(lambda: not served.exists(), timeout=5)
        assert wait_for(lambda: counted_threads(proc.pid) == [])  # counted no more


@requires_tracing
def test_a_qemu_that_names_another_process_thread_does_not_get_its_exits(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A QEMU (or what answers as one on a socket the daemon forwards) names its vCPU
    threads in query-cpus-fast: the daemon counts those that are its own threads, never
    another process's (another VM's exits would be served to this one's owner)."""
    stranger = subprocess.Popen(["sleep", "600"])
    mine = threading.get_native_id()  # the fake QEMU below runs in this process
    cpus = [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": mine,
             "target": "x86_64"},
            {"cpu-index": 1, "qom-path": "/machine/unattached/device[1]",
             "thread-id": stranger.pid, "target": "x86_64"}]  # fmt: skip
    answers = {"query-commands": '[{"name": "query-stats"}, {"name": "query-stats-schemas"}]',
               "query-name": '{"name": "liar"}', "query-cpus-fast": json.dumps(cpus),
               "query-stats-schemas": "[]"}  # fmt: skip
    try:
        with FakePeer(tmp_path / "liar.sock", answers):
            proc, run_dir = start_daemon("--qmp", str(tmp_path / "*.sock"))
            assert wait_for((run_dir / "liar.qmp").exists)
            reply = json.loads(ask(run_dir / "liar.qmp", NAMED))["return"]
            assert [r["qom-path"] for r in reply] == ["/machine/unattached/device[0]"]
            assert counted_threads(proc.pid) == [mine]
    finally:
        stop_process(stranger)


@pytest.mark.qemu
@pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU 7.2: {QEMU_REASON}")
@requires_tracing
def test_a_forwarded_qemu_72_gets_its_exit_reasons_beside_its_own_reply(
    start_daemon: Callable[..., Daemon],
) -> None:
    """QEMU 7.x answers the kvm part, byte for byte; the daemon the tracepoints part,
    counted on the threads QEMU names in query-cpus-fast, first (prepended last)."""
    with QemuVM(2, paused=True, extra_args=["-name", "exits72"]) as vm:
        proc, run_dir = start_daemon("--qmp", str(vm.qmp_path.parent / "*.sock"))
        served = run_dir / "exits72.qmp"
        assert wait_for(served.exists)
        both = (b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":'
                b'[{"provider":"kvm"},{"provider":"tracepoints"}]}}')  # fmt: skip
        kvm = b'{"execute":"query-stats","arguments":{"target":"vcpu","providers":[{"provider":"kvm"}]}}'
        ours, theirs = ask(served, both), ask(vm.qmp_path, kvm)
        assert ours.endswith(theirs[len(b'{"return": [') :])  # QEMU's text, as it sent it
        results = json.loads(ours)["return"]
        cpus = json.loads(ask(vm.qmp_path, b'{"execute":"query-cpus-fast"}'))["return"]
        assert [(r["provider"], r["qom-path"]) for r in results[:2]] == [
            ("tracepoints", c["qom-path"]) for c in reversed(cpus)]  # fmt: skip
        assert "kvm_userspace_exit(IO)" in {s["name"] for s in results[0]["stats"]}
        hmp = ask(served, b'{"execute":"human-monitor-command","arguments":{"command-line":'
                          b'"info stats vcpu * tracepoints"}}')  # fmt: skip
        assert b"kvm_userspace_exit(IO) (cumulative): 0" in hmp  # paused: answered here
        assert counted_threads(proc.pid) == sorted(c["thread-id"] for c in cpus)
        assert ask(served, b'{"execute":"query-stats","arguments":{"target":"vcpu"}}') == ask(
            vm.qmp_path, b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
        )
