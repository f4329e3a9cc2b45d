"""``vmstats serve --libvirt`` against a real libvirt (Debian 12: libvirt 9.0, QEMU 7.2):
domains found through the API, named, served, followed through their lifecycle and a
libvirtd restart, never tainted, and agreeing with ``virsh domstats``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.kvm.conftest import requires_kvm
from tests.serve.conftest import Daemon
from vmstats import acl
from vmstats.testing.hostile import wait_for
from vmstats.testing.libvirt import (
    DOMAIN_PREFIX,
    Libvirtd,
    create,
    destroy,
    domstats,
    libvirt_unavailable_reason,
    qemu10_emulator,
    qemu_pid,
    taints,
    virsh,
)
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import RawQMP, stop_process

LIBVIRT_REASON = libvirt_unavailable_reason()
pytestmark = [pytest.mark.kvm, pytest.mark.qemu, pytest.mark.libvirt, requires_kvm,
              pytest.mark.skipif(LIBVIRT_REASON is not None, reason=str(LIBVIRT_REASON))]  # fmt: skip

#: Long enough that what happens within a test comes from libvirt's events, not a scan.
NO_SCAN = ("--scan-interval", "600")


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Libvirtd]:
    with Libvirtd() as daemon:
        yield daemon


def unique(what: str) -> str:
    return f"{DOMAIN_PREFIX}{what}-{uuid.uuid4().hex[:8]}"


def ask(path: Path, command: str, arguments: Mapping[str, object] | None = None) -> Any:
    """One command on a connection of its own; its return value (or its error, raised)."""
    qmp = RawQMP(path, timeout=30)
    try:
        qmp.negotiate()
        request: dict[str, object] = {"execute": command}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        reply = json.loads(qmp.request(json.dumps(request).encode()))
    finally:
        qmp.close()
    if "error" in reply:
        raise AssertionError(reply["error"])
    return reply["return"]


def works(path: Path, command: str, arguments: Mapping[str, object] | None = None) -> bool:
    try:
        ask(path, command, arguments)
    except (AssertionError, OSError):
        return False
    return True


def cumulative(path: Path) -> dict[str, int]:
    """Every cumulative stat the socket serves, as libvirt's keys name them
    (``vm.NAME.sum``, ``vcpu.N.NAME.sum``)."""
    out = {}
    for target in ("vm", "vcpu"):
        cpus = {c["qom-path"]: c["cpu-index"] for c in ask(path, "query-cpus-fast")}
        schema = {s["target"]: {v["name"]: v for v in s["stats"]}
                  for s in ask(path, "query-stats-schemas")}  # fmt: skip
        for result in ask(path, "query-stats", {"target": target}):
            prefix = "vm" if target == "vm" else f"vcpu.{cpus[result['qom-path']]}"
            for stat in result["stats"]:
                if schema[target][stat["name"]]["type"] == "cumulative":
                    out[f"{prefix}.{stat['name']}.sum"] = stat["value"]
    return out


def served_names(run_dir: Path) -> dict[str, dict[str, object]]:
    state = run_dir / "vms.json"
    return {row["name"]: row for row in json.loads(state.read_text())} if state.exists() else {}


def served_domain(start_daemon: Callable[..., Daemon], what: str, *options: str,
                  vcpus: int = 2, **create_args: Any) -> tuple[str, Path, Path]:  # fmt: skip
    """A new domain and a daemon (``--libvirt``, scans 600 s apart, ``options``) that serves
    it: its name, its socket and the run directory."""
    name = unique(what)
    create(name, vcpus=vcpus, **create_args)
    _proc, run_dir = start_daemon("--libvirt", *NO_SCAN, *options)
    assert wait_for(lambda: name in served_names(run_dir), timeout=30)
    return name, run_dir / f"{name}.qmp", run_dir


def test_a_domain_is_named_served_agrees_with_virsh_and_is_not_tainted(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    port = free_port()
    name, path, run_dir = served_domain(start_daemon, "agree", "--libvirt-max-age", "0",
                                        "--metrics", f"127.0.0.1:{port}",
                                        "--allow", "4243:domain=*agree*",
                                        "--allow", "4244:domain=*other*")  # fmt: skip
    row = served_names(run_dir)[name]
    assert row["groups"] == ["4243"]  # selected by its domain name
    assert acl.groups_of(path) == {4243: 6}
    assert row["uuid"] == virsh("domuuid", name).strip()
    assert row["pid"] == qemu_pid(name)
    assert row["source"] == "libvirt (vm, vcpu)"  # QEMU 7.2 keeps no stats fds
    assert ask(path, "query-name") == {"name": name}
    assert [c["cpu-index"] for c in ask(path, "query-cpus-fast")] == [0, 1]

    # Every cumulative stat libvirt gives, bracketed by two of our reads.
    before = cumulative(path)
    theirs = {k: int(v) for k, v in domstats(name, "--vm", "--vcpu").items()
              if k.endswith(".sum")}  # fmt: skip
    after = cumulative(path)
    assert set(before) == set(theirs) == set(after)
    assert len([k for k in theirs if k.startswith("vm.")]) > 5
    assert len([k for k in theirs if k.startswith("vcpu.1.")]) > 20
    for key, value in theirs.items():
        assert before[key] <= value <= after[key], key

    # The schema is the kernel's, histograms included; their values are absent.
    schemas = {s["target"]: {v["name"]: v for v in s["stats"]}
               for s in ask(path, "query-stats-schemas")}  # fmt: skip
    histograms = {n for n, v in schemas["vcpu"].items() if v["type"].endswith("histogram")}
    assert histograms
    served = {s["name"] for r in ask(path, "query-stats", {"target": "vcpu"})
              for s in r["stats"]}  # fmt: skip
    assert not served & histograms
    hmp = ask(path, "human-monitor-command", {"command-line": "info stats vm"})
    assert "remote_tlb_flush_requests" in str(hmp)

    listing = subprocess.run([sys.executable, "-m", "vmstats", "list", str(run_dir)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert listing.splitlines()[0].split()[:2] == ["name", "uuid"]
    assert f"{name}  {row['uuid']}" in listing
    # The exporter names it, gives its UUID, and has its VM-level and vCPU stats.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        metrics = reply.read().decode()
    info = next(x for x in metrics.splitlines() if x.startswith("vmstats_vm_info{")
                and f'vm="{name}"' in x)  # fmt: skip
    assert f'uuid="{row["uuid"]}"' in info
    assert f'kvm_vm_remote_tlb_flush_requests_total{{vm="{name}"}}' in metrics
    assert f'kvm_vcpu_exits_total{{vcpu="1",vm="{name}"}}' in metrics
    assert taints(name) == []
    destroy(name)


def test_domains_that_start_and_stop_are_followed_at_once(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    _proc, run_dir = start_daemon("--libvirt", *NO_SCAN)
    assert wait_for(lambda: (run_dir / "vms.json").exists())
    name = unique("later")
    create(name, vcpus=1)
    path = run_dir / f"{name}.qmp"
    assert wait_for(path.exists, timeout=30)  # an event, not a scan: the scan is 600 s away
    assert ask(path, "query-stats", {"target": "vm"})  # its error, if any, in the failure
    destroy(name)
    assert wait_for(lambda: not path.exists(), timeout=30)
    assert name not in served_names(run_dir)


def test_a_libvirtd_restart_is_survived(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    name, path, run_dir = served_domain(start_daemon, "restart", "--libvirt-max-age", "0",
                                        vcpus=1)  # fmt: skip
    libvirtd.stop()
    try:
        # The domain stays served (its QEMU runs on); VM-level stats say why they fail.
        with pytest.raises(AssertionError, match="libvirt"):
            ask(path, "query-stats", {"target": "vm"})
        assert path.exists()
    finally:
        libvirtd.start()
    if not wait_for(lambda: works(path, "query-stats", {"target": "vm"}), timeout=30):
        ask(path, "query-stats", {"target": "vm"})  # the error it still gives, as the failure
        pytest.fail("VM-level stats came back only after 30 s")
    later = unique("after-restart")
    create(later, vcpus=1)
    assert wait_for((run_dir / f"{later}.qmp").exists, timeout=30)  # events again
    for domain in (name, later):
        destroy(domain)


#: A connection whose close libvirt never says (its close callback taken away), through
#: a libvirtd stop and start: what its first failing call does.  A process of its own:
#: libvirt binds its events to one event loop per process.
UNSAID_CLOSE = """
import asyncio, sys
from vmstats.errors import LibvirtError
from vmstats.libvirt.host import LibvirtHost

async def main() -> None:
    host = LibvirtHost("qemu:///system", lambda why: None, timeout=10)
    await host.start()
    host._conn.unregisterCloseCallback()
    print("connected", flush=True)
    sys.stdin.readline()  # libvirtd is stopped
    try:
        await host.domains()
        print("answered", flush=True)
    except LibvirtError:
        print("failed, connected" if host.connected else "failed, reconnecting", flush=True)
    sys.stdin.readline()  # libvirtd is back
    for _ in range(300):
        if host.connected:
            break
        await asyncio.sleep(0.1)
    print("connected" if host.connected else "never connected again", flush=True)
    await host.domains()
    await host.close()

asyncio.run(main())
"""


#: libvirt says a close from the thread whose call found the connection broken when its
#: event loop has not seen it yet (a worker thread of ours, on a busy host): here the loop
#: is held while a plain thread makes that call, with libvirtd stopped.
CLOSE_FROM_A_THREAD = """
import asyncio, sys, threading
import libvirt
from vmstats.libvirt.host import LibvirtHost

async def main() -> None:
    loop_thread = threading.get_ident()
    said = []  # (what, the thread it was said on)
    host = LibvirtHost("qemu:///system", lambda why: said.append((why, threading.get_ident())),
                       timeout=10)
    await host.start()
    conn = host._conn
    print("connected", flush=True)
    sys.stdin.readline()  # libvirtd is stopped; the loop, held here, sees nothing
    def call() -> None:
        try:
            conn.listAllDomains()
        except libvirt.libvirtError:
            pass
    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    print("called from a thread", flush=True)
    sys.stdin.readline()  # libvirtd is back
    for _ in range(300):
        if ("disconnected", loop_thread) in said and host.connected:
            break
        await asyncio.sleep(0.1)
    print("connected" if host.connected else "never connected again", flush=True)
    threads = {thread for _, thread in said}
    print("said on the loop" if threads == {loop_thread} else f"said on {said}", flush=True)
    await host.domains()
    await host.close()

asyncio.run(main())
"""


def through_a_restart(libvirtd: Libvirtd, script: str, while_stopped: str) -> list[str]:
    """Run ``script`` (a process of its own: libvirt binds its events to one event loop
    per process) through a libvirtd stop and start: it says ``connected``, is told each
    step on stdin, says ``while_stopped`` when libvirtd is stopped; what it says after."""
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "connected\n"
        libvirtd.stop()
        try:
            process.stdin.write("stopped\n")
            process.stdin.flush()
            assert process.stdout.readline() == f"{while_stopped}\n"
        finally:
            libvirtd.start()
        process.stdin.write("started\n")
        process.stdin.flush()
        said, _ = process.communicate(timeout=120)  # it bounds its own waits: 30 s at most
        assert process.returncode == 0
        return said.splitlines()
    finally:
        stop_process(process)


def test_a_close_that_libvirt_never_says_is_found_at_the_first_failing_call(
    libvirtd: Libvirtd,
) -> None:
    """libvirt says a connection closed from its event loop.  Where it does not, the
    first call that fails finds the connection dead and reconnects: reads do not fail on
    a dead connection for ever (the daemon's domains would, until it restarts)."""
    assert through_a_restart(libvirtd, UNSAID_CLOSE, "failed, reconnecting") == ["connected"]


def test_a_close_said_from_a_worker_thread_reconnects_on_the_loop(libvirtd: Libvirtd) -> None:
    """A close libvirt says from the thread of the call that found it (the CI flake of
    the restart test above: the close came from a worker, which has no event loop, so no
    reconnection was ever made) is handed to the loop: the host reconnects, and its
    owner hears of it on the loop."""
    said = through_a_restart(libvirtd, CLOSE_FROM_A_THREAD, "called from a thread")
    assert said == ["connected", "said on the loop"]


def signal_exits(name: str) -> list[int]:
    stats = domstats(name, "--vcpu")
    return [int(stats[f"vcpu.{n}.signal_exits.sum"]) for n in range(int(stats["vcpu.current"]))]


def kicks_within_one_read(name: str, action: Callable[[], object]) -> None:
    """Run ``action``: the domain's vCPUs must gain no more kicks than the two reads of
    ``virsh domstats`` around it make, plus at most one read of ours."""
    one = signal_exits(name)
    alone = [b - a for a, b in zip(one, signal_exits(name), strict=True)]  # what a read costs
    assert min(alone) >= 1
    before = signal_exits(name)
    action()
    after = signal_exits(name)
    for vcpu, (a, b) in enumerate(zip(before, after, strict=True)):
        assert b - a <= 2 * alone[vcpu], (vcpu, b - a, alone[vcpu])


def test_many_readers_share_one_libvirt_read(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    """QEMU 7.2 kicks every vCPU for each vCPU read libvirt makes: twenty readers within
    ``--libvirt-max-age`` must cost what one read costs, not twenty."""
    name, path, _ = served_domain(start_daemon, "kicks", "--libvirt-max-age", "300")

    def readers() -> None:
        for _ in range(10):  # one after the other: each alone would be a read
            ask(path, "query-stats", {"target": "vcpu"})
        at_once = [threading.Thread(target=ask, args=(path, "query-stats", {"target": "vcpu"}))
                   for _ in range(10)]  # fmt: skip
        for reader in at_once:
            reader.start()
        for reader in at_once:
            reader.join()

    kicks_within_one_read(name, readers)
    destroy(name)


def test_vm_level_queries_kick_no_vcpu(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    """libvirt's VM group is read apart from its vCPU group, which QEMU 7.2 answers by
    kicking every vCPU: a VM-level query, even reading libvirt every time, kicks none."""
    name, path, _ = served_domain(start_daemon, "vm-kicks", "--libvirt-max-age", "0")

    def vm_queries() -> None:
        for _ in range(10):
            ask(path, "query-stats", {"target": "vm"})
            ask(path, "human-monitor-command", {"command-line": "info stats vm"})

    kicks_within_one_read(name, vm_queries)
    destroy(name)


def test_vcpus_plugged_through_libvirt_are_served(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    name, path, _ = served_domain(start_daemon, "plug", "--libvirt-max-age", "0", vcpus=1,
                                  max_vcpus=3)  # fmt: skip
    assert len(ask(path, "query-stats", {"target": "vcpu"})) == 1
    virsh("setvcpus", name, "3", "--live")
    results = ask(path, "query-stats", {"target": "vcpu"})
    assert len(results) == 3
    cpus = ask(path, "query-cpus-fast")
    assert [c["cpu-index"] for c in cpus] == [0, 1, 2]
    destroy(name)


def exits_of_signals(path: Path) -> list[int]:
    """Every vCPU's signal_exits through our socket (from the fds: this read kicks none)."""
    request: dict[str, object] = {
        "target": "vcpu",
        "providers": [{"provider": "kvm", "names": ["signal_exits"]}],
    }
    return [r["stats"][0]["value"] for r in ask(path, "query-stats", request)]


def test_a_qemu_10_domain_gives_vcpu_stats_from_its_fds_and_vm_stats_from_libvirt(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    emulator, why = qemu10_emulator()
    if emulator is None:
        pytest.skip(why)
    name, path, run_dir = served_domain(start_daemon, "qemu10", "--libvirt-max-age", "0",
                                        emulator=emulator)  # fmt: skip
    assert served_names(run_dir)[name]["source"] == "fds (vcpu) + libvirt (vm)"
    # Histograms come with the fds; VM-level values agree with virsh's.
    vcpus = ask(path, "query-stats", {"target": "vcpu"})
    assert any(s["name"] == "halt_wait_hist" for s in vcpus[0]["stats"])
    before = cumulative(path)
    theirs = {k: int(v) for k, v in domstats(name, "--vm").items() if k.endswith(".sum")}
    after = cumulative(path)
    assert len(theirs) > 5
    for key, value in theirs.items():
        assert before[key] <= value <= after[key], key
    # No vCPU is kicked for its stats, however often they are read.
    first = exits_of_signals(path)
    for _ in range(20):
        ask(path, "query-stats", {"target": "vcpu"})
    assert exits_of_signals(path) == first
    assert taints(name) == []
    destroy(name)


def test_a_vcpu_plugged_into_a_qemu_10_domain_is_served_without_a_scan(
    libvirtd: Libvirtd, start_daemon: Callable[..., Daemon]
) -> None:
    """libvirt says nothing of a vCPU hot-plug (no event of any kind, measured): the
    VMM's new thread is noticed when its vCPUs are read, and the new fd taken."""
    emulator, why = qemu10_emulator()
    if emulator is None:
        pytest.skip(why)
    name, path, _ = served_domain(start_daemon, "qemu10-plug", vcpus=1, max_vcpus=3,
                                  emulator=emulator)  # fmt: skip
    assert len(ask(path, "query-stats", {"target": "vcpu"})) == 1
    virsh("setvcpus", name, "3", "--live")
    assert wait_for(lambda: len(ask(path, "query-stats", {"target": "vcpu"})) == 3, timeout=30)
    cpus = ask(path, "query-cpus-fast")
    assert [c["cpu-index"] for c in cpus] == [0, 1, 2]
    assert all(c["thread-id"] for c in cpus)
    destroy(name)


def test_once_lists_the_domains(libvirtd: Libvirtd, tmp_path: Path) -> None:
    name = unique("once")
    domain_uuid = create(name, vcpus=1)
    try:
        done = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--once", "--libvirt",
                               "--run-dir", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith(name))
        assert "libvirt (vm, vcpu)" in line
        assert domain_uuid in line
    finally:
        destroy(name)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("qemu:///bogus", "unexpected qemu URI path '/bogus'"),
        ("nonsense", "no connection driver available"),
        ("qemu+unix:///system?socket=/nonexistent", "Failed to connect socket"),
    ],
)
def test_a_uri_libvirt_cannot_serve_is_one_line_and_exit_1(
    tmp_path: Path, uri: str, says: str
) -> None:
    """``--once`` must answer now; the daemon waits only for a libvirtd that does not
    answer (yet), and gives up at once on a URI libvirt rejects."""
    once = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--once", "--libvirt", uri,
                           "--run-dir", str(tmp_path / "once")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert once.returncode == 1
    assert once.stderr.startswith(f"vmstats serve: libvirt at {uri}: ")
    assert says in once.stderr
    assert once.stderr.count("\n") == 1


def test_the_daemon_gives_up_on_a_rejected_uri_and_waits_for_an_absent_libvirtd(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    rejected = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--libvirt",
                               "qemu:///bogus", "--run-dir", str(tmp_path / "rejected")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert rejected.returncode == 1
    assert "vmstats serve: libvirt at qemu:///bogus: " in rejected.stderr
    assert "Traceback" not in rejected.stderr
    proc, run_dir = start_daemon("--libvirt", "qemu+unix:///system?socket=/nonexistent")
    assert wait_for(lambda: (run_dir / "vms.json").exists())  # serving the rest meanwhile
    assert proc.poll() is None
