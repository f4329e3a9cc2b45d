"""``vmstats serve`` with real processes: the demo VM and a QEMU 10.0, found by the stats
fds they keep, served read-only, and forgotten when they exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.testing.hostile import DemoServer, fd_count, kill, rss_bytes, wait_for
from vmstats.testing.qemu import RawQMP, stop_process
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

QEMU10_REASON = qemu10_unavailable_reason()
pytestmark = [pytest.mark.kvm, requires_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")]  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir", str(run_dir),
                             "--scan-interval", "0.3"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    yield proc, run_dir
    assert stop_process(proc) == 0  # SIGTERM: a clean exit...
    assert not list(run_dir.glob("*.qmp"))  # ...that removes the sockets


def sockets(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.qmp"))


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
        assert wait_for(lambda: len(sockets(run_dir)) == 1)
        (served,) = sockets(run_dir)
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
        assert f"{demo.vm_pid}" in listing and "fds (vm, vcpu)" in listing
        kill(demo.vm_pid)
        assert wait_for(lambda: not sockets(run_dir), timeout=5)  # removed with its VM
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(100):
                reply = ours.request(request)
                assert b"the VM is gone" in reply  # an error, then EOF
        ours.close()
        theirs.close()
    assert wait_for(lambda: fd_count(proc.pid) == baseline)  # every fd of the VM let go


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


GROUP = 4242  # a group id no account on this machine has


def connect_as_nobody(path: Path, groups: list[int]) -> subprocess.CompletedProcess[str]:
    """Connect with the system's Python as uid 65534 with these supplementary groups."""

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(65534)
        os.setuid(65534)

    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror); sys.exit(1)\n"
              "print(s.recv(200).decode())\n")  # fmt: skip
    return subprocess.run(["/usr/bin/python3", "-c", script, str(path)], capture_output=True,
                          text=True, timeout=30, preexec_fn=drop)  # fmt: skip


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_only_the_group_may_connect() -> None:
    parent = Path(tempfile.mkdtemp(prefix="vmstats-serve-"))
    os.chmod(parent, 0o755)
    run_dir = parent / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir", str(run_dir),
                             "--scan-interval", "0.3", "--group", str(GROUP)])  # fmt: skip
    try:
        with DemoServer(vcpus=1, rate=0.001):
            assert wait_for(lambda: len(sockets(run_dir)) == 1)
            (served,) = sockets(run_dir)
            assert served.stat().st_gid == GROUP and run_dir.stat().st_gid == GROUP
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
            member = connect_as_nobody(served, [GROUP])
            assert member.returncode == 0 and member.stdout.startswith('{"QMP"'), member
            stranger = connect_as_nobody(served, [])
            assert stranger.returncode == 1 and "Permission denied" in stranger.stdout
    finally:
        assert stop_process(proc) == 0
        shutil.rmtree(parent, ignore_errors=True)


def test_config_file_and_sighup(tmp_path: Path) -> None:
    config = tmp_path / "vmstats.toml"
    run_dir = tmp_path / "run"
    config.write_text(f'run-dir = "{run_dir}"\nscan-interval = 0.3\nidle-timeout = 60\n')
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert wait_for(lambda: (run_dir / "vms.json").exists())  # the run-dir came from it
        config.write_text("scan-interval = [")  # broken: kept running with what it had
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        config.write_text("scan-interval = 0.5\n")
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        stop_process(proc)
    assert proc.returncode == 0
    assert "keeping the settings in use" in stderr and f"{config} reread" in stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--config", str(bad),
                          "--once"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "unknown settings colour" in out.stderr


CYCLES = int(os.environ.get("VMSTATS_SERVE_CYCLES", "20"))


def test_vms_that_come_and_go_leave_no_fd_or_memory_behind(
    daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    """Set VMSTATS_SERVE_CYCLES=200 for the issue's full run (about 4 minutes)."""
    proc, run_dir = daemon
    assert wait_for(lambda: (run_dir / "vms.json").exists())
    baseline_fds, baseline_rss = fd_count(proc.pid), rss_bytes(proc.pid)
    for _ in range(CYCLES):
        with DemoServer(vcpus=1, rate=0.001):
            assert wait_for(lambda: len(sockets(run_dir)) == 1)
        assert wait_for(lambda: not sockets(run_dir), timeout=5)
    assert wait_for(lambda: fd_count(proc.pid) == baseline_fds)
    assert rss_bytes(proc.pid) - baseline_rss < 10 << 20
