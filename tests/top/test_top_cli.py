"""``vmstats top`` batch modes and ``vmstats record`` / ``--replay``, run as a user would:
against the demo VM, a real QEMU 7.2 and a real QEMU 10.0.  Expected columns are derived
from each server's own schemas, never from a list."""

from __future__ import annotations

import gzip
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.qmp.test_cli_clients import STATS_COMMANDS, FakePeer
from vmstats.reader.sample import Sample
from vmstats.testing.hostile import DemoServer, kill
from vmstats.testing.qemu import QemuVM, qemu_unavailable_reason
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm
from vmstats.top.record import read_recording

QEMU_REASON = qemu_unavailable_reason()
QEMU10_REASON = qemu10_unavailable_reason()


def vmstats(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmstats", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def expected_columns(socket: Path, pattern: str = "") -> list[str]:
    """CSV columns for a server, from its own query-stats-schemas (kvm, vm then vcpu;
    then vmstats' tracepoints, where the server counts them)."""
    schemas = json.loads(vmstats("schemas", str(socket), "--provider", "kvm", "--json").stdout)
    exits = vmstats("schemas", str(socket), "--provider", "tracepoints", "--json")
    if exits.returncode == 0:  # a vmstats server that counts exit reasons
        schemas = json.loads(exits.stdout) + schemas
    columns = []
    for schema in reversed(schemas):  # QEMU prepends: vm was added first
        for value in reversed(schema["stats"]):
            if not value["name"].startswith(pattern):
                continue
            key = f"{schema['target']}.{value['name']}"
            columns.append(key)
            if value["type"].endswith("histogram"):
                columns += [f"{key}.p50", f"{key}.p90", f"{key}.p99"]
    return columns


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    with DemoServer(vcpus=2, rate=200) as server:
        yield server


@pytest.mark.kvm
@requires_kvm
def test_csv_header_comes_from_the_kernel_and_rates_move(demo: DemoServer) -> None:
    out = vmstats("top", str(demo.path), "-l", "-c", "-s", "0.3", "--once")
    assert out.returncode == 0, out.stderr
    header, line = out.stdout.splitlines()
    assert header.split(",") == ["time", "vm", *expected_columns(demo.path)]
    values = dict(zip(header.split(","), line.split(","), strict=True))
    assert values["vm"] == "qmp"  # the socket's name
    assert float(values["vcpu.halt_exits"]) > 0  # the demo halts 200 times/s per vCPU


@pytest.mark.kvm
@requires_kvm
def test_log_repeats_its_banner_and_filters_anchor(demo: DemoServer) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "top", str(demo.path), "-l",
                             "-s", "0.1", "-f", "halt_"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(42)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    banners = [i for i, line in enumerate(lines) if line.split()[0] == "time"]
    assert banners == [0, 21]  # every 20 lines
    assert lines[0].split()[2:] == expected_columns(demo.path, "halt_")


@pytest.mark.kvm
@requires_kvm
def test_once_json_and_skip_zero(demo: DemoServer) -> None:
    out = vmstats("top", str(demo.path), "--json", "-1", "-s", "0.3", "-z")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    stats = record["vms"]["qmp"]
    assert stats["vcpu.halt_exits"]["rate"] > 0
    assert stats["vcpu.halt_exits"]["total"] > 0
    assert "vm.pages_1g" not in stats  # zero: skipped
    for entry in stats.values():  # every stat left has something that is not zero
        assert any(entry.get(k) not in (None, 0) for k in ("rate", "total", "value", "true_count"))
    full = json.loads(vmstats("top", str(demo.path), "--json", "-1", "-s", "0.3").stdout)
    hist = full["vms"]["qmp"]["vcpu.halt_wait_hist"]
    assert hist["type"] == "log2-histogram"
    assert len(hist["buckets"]) == 32


@pytest.mark.kvm
@requires_kvm
def test_vcpus_by_number(demo: DemoServer) -> None:
    both = json.loads(vmstats("top", str(demo.path), "--json", "-1", "-s", "0.3",
                              "-f", "blocking").stdout)  # fmt: skip
    one = json.loads(vmstats("top", str(demo.path), "--json", "-1", "-s", "0.3",
                             "-f", "blocking", "--vcpus", "1").stdout)  # fmt: skip
    assert both["vms"]["qmp"]["vcpu.blocking"]["objects"] == 2
    assert one["vms"]["qmp"]["vcpu.blocking"]["objects"] == 1


@pytest.mark.kvm
@requires_kvm
def test_fields_help_lists_the_stats(demo: DemoServer) -> None:
    out = vmstats("top", str(demo.path), "-f", "help")
    assert out.returncode == 0
    assert set(out.stdout.split()) == set(expected_columns(demo.path)) - {
        c for c in expected_columns(demo.path) if c.count(".") == 2
    }


@pytest.mark.parametrize(("args", "message"), [
    (["top", "-l"], "give at least one SOURCE"),
    (["top", "x.sock", "-c"], "-c/--csv goes with -l, -L or --replay"),
    (["top", "x.sock", "-s", "nan"], "must be a finite number above 0"),
    (["top", "x.sock", "-f", "("], "not a regular expression"),
    (["top", "x.sock", "--vcpus", "2-1"], "not a vCPU number or range"),
    (["record", "x.sock", "-o", "/nonexistent/dir/r.jsonl"], "does not exist"),
    (["top", "x.sock"], "the full-screen view needs a terminal: give -1, -l, -L FILE or --json"),
])  # fmt: skip
def test_usage_errors(args: list[str], message: str) -> None:
    out = vmstats(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_source_is_one_clear_line(tmp_path: Path) -> None:
    out = vmstats("top", str(tmp_path / "none.sock"), "-1", "-s", "0.2")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "cannot connect to QMP" in out.stderr


def halt_exits(sample: Sample) -> int:
    total = 0
    for stats in sample.values.values():
        value = stats.get("halt_exits", 0)
        assert isinstance(value, int)
        total += value
    return total


@pytest.mark.kvm
@requires_kvm
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_record_then_replay_gives_the_same_samples(demo: DemoServer, tmp_path: Path,
                                                   suffix: str) -> None:  # fmt: skip
    path = tmp_path / f"rec{suffix}"
    out = vmstats("record", str(demo.path), "-o", str(path), "-s", "0.2", "--duration", "1.5")
    assert out.returncode == 0, out.stderr
    refreshes = list(read_recording(path))
    assert len(refreshes) >= 5
    samples = [r.samples["qmp"] for r in refreshes]
    exits = [halt_exits(s) for s in samples]
    assert exits == sorted(exits)
    assert exits[-1] > exits[0]
    replayed = vmstats("top", "--replay", str(path), "--json", "-f", "halt_exits")
    lines = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [line["vms"]["qmp"]["vcpu.halt_exits"]["total"] for line in lines] == [
        e - exits[0] for e in exits[1:]
    ]  # the replay sees exactly the recorded values
    csv = vmstats("top", "--replay", str(path), "-c")
    assert csv.returncode == 0, csv.stderr
    lines = csv.stdout.splitlines()
    assert lines[0].split(",") == ["time", "vm", *expected_columns(demo.path)]
    assert len(lines) == len(refreshes)  # a header, and one line per refresh after the first


@pytest.mark.kvm
@requires_kvm
def test_a_recording_cut_anywhere_in_its_last_line_still_replays(demo: DemoServer,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "rec.jsonl"
    vmstats("record", str(demo.path), "-o", str(path), "-s", "0.2", "--duration", "0.9")
    data = path.read_bytes()
    whole = list(read_recording(path))
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = tmp_path / "cut.jsonl"
    for offset in range(last_start, len(data)):
        cut.write_bytes(data[:offset])
        got = list(read_recording(cut))
        assert [r.samples for r in got[: len(whole) - 1]] == [r.samples for r in whole[:-1]]
    gz = tmp_path / "rec.jsonl.gz"
    with gzip.open(gz, "wb") as file:
        file.write(data)
    raw = gz.read_bytes()
    for offset in range(len(raw) - 40, len(raw)):  # a gzip stream cut short
        (tmp_path / "cut.gz").write_bytes(raw[:offset])
        assert len(list(read_recording(tmp_path / "cut.gz"))) >= len(whole) - 2


def test_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\n')
    out = vmstats("top", "--replay", str(path), "-c")
    assert out.returncode == 1
    assert "is not a vmstats recording" in out.stderr


@pytest.mark.parametrize(("path", "said"), [
    ("/proc/self/mem", "cannot read /proc/self/mem: Input/output error"),  # a read that fails
    ("/dev/null", "/dev/null is not a file: a recording is one"),
])  # fmt: skip
def test_a_recording_that_cannot_be_read_is_said_in_one_line(path: str, said: str) -> None:
    out = vmstats("top", "--replay", path, "-c")
    assert (out.returncode, out.stderr) == (1, f"vmstats top: {said}\n")


def test_a_recording_that_cannot_be_written_is_said_in_one_line(tmp_path: Path) -> None:
    """A full disk (``/dev/full``), as the recorder flushes."""
    out = vmstats("record", str(tmp_path / "none.sock"), "-o", "/dev/full", "-s", "0.2",
                  "--duration", "0.5")  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.endswith("vmstats record: cannot write /dev/full: No space left on device\n")
    assert "Traceback" not in out.stderr


@pytest.mark.kvm
@requires_kvm
def test_a_directory_of_sockets_and_a_vm_that_dies_and_returns(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = DemoServer(vcpus=1, extra=[])
    first.args[first.args.index("--qmp") + 1] = str(run_dir / "alpha.qmp")
    first.path = run_dir / "alpha.qmp"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "top", str(run_dir), "--json",
                             "-s", "0.3"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    try:
        with first:
            states = [json.loads(proc.stdout.readline())["vms"] for _ in range(3)]
            assert "halt_exits" in str(states[-1].get("alpha", {}))
            kill(first.vm_pid)
            first.proc.wait(10)  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                vms = json.loads(proc.stdout.readline())["vms"]
                if "gone" in vms.get("alpha", {}):
                    break
            assert "gone" in vms["alpha"]
        back = DemoServer(vcpus=1)
        back.args[back.args.index("--qmp") + 1] = str(run_dir / "alpha.qmp")
        back.path = run_dir / "alpha.qmp"
        with back:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                vms = json.loads(proc.stdout.readline())["vms"]
                if "vcpu.halt_exits" in vms.get("alpha", {}):
                    break
            assert "vcpu.halt_exits" in vms["alpha"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


@pytest.mark.qemu
@pytest.mark.parametrize("make_vm", [
    pytest.param(QemuVM, id="qemu-7.2", marks=pytest.mark.skipif(
        QEMU_REASON is not None, reason=f"no QEMU: {QEMU_REASON}")),
    pytest.param(qemu10_vm, id="qemu-10.0", marks=pytest.mark.skipif(
        QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")),
])  # fmt: skip
def test_batch_against_real_qemu(make_vm: Callable[..., QemuVM]) -> None:
    """Exact CSV header; the VM is shown by QEMU's ``-name``, not its socket's name."""
    with make_vm(vcpus=2, extra_args=["-name", "guest=web1,debug-threads=on"]) as vm:
        out = vmstats("top", str(vm.qmp_path), "-l", "-c", "-1", "-s", "0.3")
        assert out.returncode == 0, out.stderr
        header, line = out.stdout.splitlines()[:2]
        assert header.split(",") == ["time", "vm", *expected_columns(vm.qmp_path)]
        assert line.split(",")[1] == "web1"
        one = json.loads(vmstats("top", str(vm.qmp_path), "--json", "-1", "-s", "0.3",
                                 "--vcpus", "1", "-f", "blocking").stdout)  # fmt: skip
        assert one["vms"]["web1"]["vcpu.blocking"]["objects"] == 1  # vCPU 1 alone


@pytest.mark.kvm
@requires_kvm
def test_log_to_file_is_reopened_on_sighup(demo: DemoServer, tmp_path: Path) -> None:
    log = tmp_path / "top.csv"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "top", str(demo.path), "-L",
                             str(log), "-c", "-s", "0.2", "-f", "exits"])  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and len(log.read_text().splitlines() if log.exists() else []) < 3
        ):
            time.sleep(0.1)
        log.rename(tmp_path / "top.csv.1")  # what logrotate does, then it signals
        proc.send_signal(signal.SIGHUP)
        while (
            time.monotonic() < deadline
            and len(log.read_text().splitlines() if log.exists() else []) < 2
        ):
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    rotated = (tmp_path / "top.csv.1").read_text().splitlines()
    fresh = log.read_text().splitlines()
    header = ",".join(["time", "vm", *expected_columns(demo.path, "exits")])
    assert rotated[0] == header
    assert fresh[0] == header
    assert header not in rotated[1:]
    assert header not in fresh[1:]


def test_ctrl_c_on_a_silent_server_exits_130(tmp_path: Path) -> None:
    import socket as socketlib

    path = tmp_path / "silent.sock"
    listener = socketlib.socket(socketlib.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)  # accepts, never greets: a QEMU busy with another client
    # Ctrl-C as at a terminal: a runner that started us in the background (``cmd &`` in
    # a script) ignores SIGINT, and a child keeps what it inherits ignored, as it should
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "query", str(path), "--target",
                             "vm", "--timeout", "30"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    listener.settimeout(30)
    connection, _ = listener.accept()  # the client is waiting for its greeting now
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    connection.close()
    listener.close()
    assert proc.returncode == 130
    assert "Traceback" not in stderr


def test_recording_an_unreachable_source_says_so(tmp_path: Path) -> None:
    out = vmstats("record", str(tmp_path / "none.sock"), "-o", str(tmp_path / "r.jsonl"),
                  "-s", "0.2", "--duration", "0.5")  # fmt: skip
    assert out.returncode == 1
    assert "cannot connect to QMP" in out.stderr
    assert "no sample could be taken" in out.stderr
    assert out.stderr.count("cannot connect") == 1  # once, not once per refresh


def test_vms_are_shown_by_their_own_names_told_apart(tmp_path: Path) -> None:
    """Two QEMUs that both say ``-name web`` (query-name) and one without a name: the
    first two are ``web`` and ``web'``, the last is its socket's name."""
    commands = json.dumps([*json.loads(STATS_COMMANDS), {"name": "query-name"}])
    named = {"query-commands": commands, "query-name": '{"name": "web"}',
             "query-stats-schemas": "[]", "query-stats": "[]", "query-cpus-fast": "[]"}  # fmt: skip
    unnamed = {**named, "query-name": "{}"}
    with (FakePeer(tmp_path / "a.qmp", named), FakePeer(tmp_path / "b.qmp", named),
          FakePeer(tmp_path / "c.qmp", unnamed)):  # fmt: skip
        out = vmstats("top", str(tmp_path), "--once")
    assert out.returncode == 0, out.stderr
    blocks = [line for line in out.stdout.splitlines() if not line.startswith(" ")]
    assert blocks == ["web:", "web':", "c:"]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU: {QEMU_REASON}")
def test_top_releases_a_qemu_7_monitor_between_refreshes() -> None:
    """QEMU 7.2's monitor serves one client at a time: a ``top`` that runs all day must
    leave it free between refreshes, for a second ``top``, a query, or an operator."""
    with QemuVM(vcpus=1, extra_args=["-name", "guest=web1"]) as vm:
        first = subprocess.Popen([sys.executable, "-m", "vmstats", "top", str(vm.qmp_path),
                                  "-l", "-c", "-s", "0.5"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert first.stdout is not None
            assert first.stdout.readline().startswith("time,vm,")  # it has read the VM
            assert ",web1," in first.stdout.readline()
            second = vmstats("top", str(vm.qmp_path), "--json", "-1", "-s", "0.3")
            assert second.returncode == 0, second.stderr
            assert "web1" in json.loads(second.stdout)["vms"]
            query = vmstats("query", str(vm.qmp_path), "--target", "vm")
            assert query.returncode == 0, query.stderr
            assert ",web1," in first.stdout.readline()  # and the first one reads on
        finally:
            first.send_signal(signal.SIGINT)
            _, errors = first.communicate(timeout=10)
        assert first.returncode == 0, errors
        assert errors == ""


@pytest.mark.qemu
@pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU: {QEMU_REASON}")
def test_a_held_qemu_7_monitor_is_one_clear_message_every_time() -> None:
    """Another client holds the monitor: each try says so in the same words (QEMU 7.2
    makes later connections fail with EINVAL once one has given up)."""
    import socket as socketlib

    with QemuVM(vcpus=1) as vm:
        held = socketlib.socket(socketlib.AF_UNIX)
        held.connect(str(vm.qmp_path))
        held.settimeout(30)
        assert held.recv(4096).startswith(b'{"QMP"')
        try:
            for _ in range(3):
                out = vmstats("top", str(vm.qmp_path), "-1", "--timeout", "1", "-s", "0.2")
                assert out.returncode == 1
                assert "is another client connected?" in out.stderr, out.stderr
                assert "Errno" not in out.stderr
        finally:
            held.close()
        assert vmstats("query", str(vm.qmp_path), "--target", "vm").returncode == 0


def peer_answers() -> dict[str, str]:
    """A VM of two vCPUs whose stats never move: exits 5 and 7, a histogram."""
    from tests.qmp.test_cli_clients import EXITS_SCHEMA

    stats = [{"provider": "kvm", "qom-path": f"/machine/unattached/device[{i}]",
              "stats": [{"name": "exits", "value": value}]}
             for i, value in ((2, 7), (0, 5))]  # fmt: skip
    cpus = [{"cpu-index": n, "qom-path": f"/machine/unattached/device[{p}]", "thread-id": 1}
            for n, p in ((0, 0), (1, 2))]  # fmt: skip
    return {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": json.dumps(stats),
            "query-stats vm": "[]", "query-cpus-fast": json.dumps(cpus),
            "query-name": '{"name": "web1"}'}  # fmt: skip


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--vcpus", "99"], 2, "vmstats top: no vCPU 99: the VM has vCPUs 0 to 1\n"),
    (["-f", "exitz"], 2, "vmstats top: no stat matches -f 'exitz' (-f help lists them)\n"),
])  # fmt: skip
def test_a_selection_that_selects_nothing_is_a_usage_error(tmp_path: Path, args: list[str],
                                                           status: int, message: str) -> None:  # fmt: skip
    with FakePeer(tmp_path / "a.qmp", peer_answers()) as peer:
        out = vmstats("top", str(peer.path), "-1", "-s", "0.2", *args)
    assert (out.returncode, out.stdout, out.stderr) == (status, "", message)


def test_an_empty_directory_is_said_not_printed_as_a_blank_line(tmp_path: Path) -> None:
    out = vmstats("top", str(tmp_path), "-1", "-s", "0.2")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"vmstats top: no VM to show: {tmp_path} hold(s) no *.qmp socket\n"


def test_once_shows_lifetime_totals_as_query_does(tmp_path: Path) -> None:
    """The counters did not move during the interval: the total is still their value
    (5 + 7), as ``vmstats query`` shows it and kvm_stat's ``-1`` does."""
    with FakePeer(tmp_path / "a.qmp", peer_answers()) as peer:
        out = vmstats("top", str(peer.path), "-1", "-s", "0.2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["vms"]["web1"]["vcpu.exits"]["total"] == 12


@pytest.mark.parametrize(("watched", "why"), [
    ("socket", "cannot connect to QMP at {path}: No such file or directory\n"),
    ("directory", "its socket was removed (the VM stopped, or is no longer served)\n"),
])  # fmt: skip
def test_log_mode_says_once_on_stderr_when_a_vm_goes(tmp_path: Path, watched: str,
                                                     why: str) -> None:  # fmt: skip
    """Once, and why: a socket named on the command line cannot be reached; one found in a
    watched directory (the daemon's) left it, as a VM that stopped does."""
    peer = FakePeer(tmp_path / "a.qmp", peer_answers())
    source = str(peer.path) if watched == "socket" else str(tmp_path)
    with peer:
        proc = subprocess.Popen([sys.executable, "-m", "vmstats", "top", source, "-l",
                                 "-c", "-s", "0.2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("time,vm,")
        assert ",web1," in proc.stdout.readline()
    assert proc.stderr is not None
    said, _, _ = select.select([proc.stderr], [], [], 30)  # at the next refresh, not never
    gone = proc.stderr.readline() if said else ""
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=10)
    assert gone == "vmstats top: web1: " + why.format(path=peer.path)
    assert rest == ""  # once, not at every refresh


def test_log_lines_keep_every_digit_and_a_socket_named_twice_is_one_vm(tmp_path: Path) -> None:
    """``-l -c`` wrote 3.98659e+09 for an instant value of 3,986,590,123; and the same
    socket given by two spellings was two VMs."""
    schema = json.dumps([{"provider": "kvm", "target": "vm",
                          "stats": [{"name": "pages_4k", "type": "instant"}]}])  # fmt: skip
    answers = {"query-stats-schemas": schema, "query-stats vcpu": "[]", "query-cpus-fast": "[]",
               "query-stats vm": '[{"provider": "kvm", "stats": [{"name": "pages_4k", '
                                 '"value": 3986590123}]}]', "query-name": '{"name": "big"}'}  # fmt: skip
    with FakePeer(tmp_path / "a.qmp", answers) as peer:
        out = vmstats("top", str(peer.path), f"{tmp_path}/./a.qmp", "-l", "-c", "-1", "-s", "0.2")
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    assert header == "time,vm,vm.pages_4k"
    assert [line.split(",")[1:] for line in lines] == [["big", "3986590123"]]
