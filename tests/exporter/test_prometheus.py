"""The exporter scraped by a real Prometheus (Debian's package, started here on loopback):
the demo VM through ``vmstats exporter``, a QEMU 10.0 through ``vmstats serve --metrics``."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.demo.vm import qemu_vcpu_path
from vmstats.kvm.attach import attach
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.stats.model import StatsTarget, StatsValue
from vmstats.testing.certs import make_pki
from vmstats.testing.hostile import DemoServer, kill, wait_for
from vmstats.testing.prometheus import (
    Prometheus,
    free_port,
    prometheus_unavailable_reason,
    promtool,
)
from vmstats.testing.qemu import stop_process
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

PROMETHEUS_REASON = prometheus_unavailable_reason()
pytestmark = [pytest.mark.kvm, requires_kvm, pytest.mark.prometheus,
              pytest.mark.skipif(PROMETHEUS_REASON is not None,
                                 reason=f"no Prometheus: {PROMETHEUS_REASON}")]  # fmt: skip


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    """The body and content type of one scrape."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.read().decode(), reply.headers["Content-Type"]


def sample_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} is not in the scrape")


@pytest.fixture
def silent_socket() -> Iterator[Path]:
    """A QMP socket whose server accepts and never greets (a stuck VMM)."""
    folder = tempfile.TemporaryDirectory(prefix="vmstats-silent-")
    path = Path(folder.name) / "stuck.qmp"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(16)
    yield path
    listener.close()
    folder.cleanup()


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vmstats", *args], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_the_demo_vm_through_the_exporter(silent_socket: Path) -> None:
    port = free_port()
    with DemoServer(vcpus=2, rate=50) as busy, DemoServer(vcpus=2, rate=0.001) as still:
        # The VMs are labelled by their sockets' names (the demo has no -name)
        (silent_socket.parent / "busy.qmp").symlink_to(busy.path)
        (silent_socket.parent / "still.qmp").symlink_to(still.path)
        exporter = start("exporter", str(silent_socket.parent), "--listen",
                         f"127.0.0.1:{port}", "--scrape-timeout", "1")  # fmt: skip
        try:
            assert wait_for(lambda: _up(port))
            text, kind = scrape(port)
            # the stuck VMM costs its timeout (1 s) once, not once per VM or per retry:
            # bounded generously here, measured in benchmarks/exporter_bench.py
            duration = re.search(r"^vmstats_scrape_duration_seconds (\S+)$", text, re.M)
            assert duration is not None
            assert float(duration.group(1)) < 10
            assert kind.startswith("text/plain")
            checked = promtool("check", "metrics", stdin=text.encode())
            assert checked.returncode == 0, checked
            assert not checked.stdout + checked.stderr, checked
            openmetrics, kind = scrape(port, "application/openmetrics-text; version=1.0.0")
            assert kind.startswith("application/openmetrics-text")
            assert openmetrics.endswith("# EOF\n")
            assert sample_value(text, 'vmstats_up{vm="stuck"}') == 0
            # counters equal a direct read of the still VM's fds (read before and after
            # the scrape: equal when the VM did not move in between)
            attached = attach(still.vm_pid)
            try:
                direct = KvmStatsProvider(None, [VcpuStatsFile(qemu_vcpu_path(i), f)
                                                 for i, f in attached.vcpus.items()])  # fmt: skip

                def exits() -> list[StatsValue]:  # by vCPU number: the provider's order
                    results = direct.stats(StatsTarget.VCPU, ["exits"], None)
                    return [r.stats[0][1] for r in results]

                for _ in range(20):
                    before, (ours, _), after = exits(), scrape(port), exits()
                    if before == after:
                        break
                assert before == after, "the still VM never stood still"
                scraped = [sample_value(ours, f'kvm_vcpu_exits_total{{vcpu="{i}",vm="still"}}')
                           for i in range(len(before))]  # fmt: skip
                assert scraped == before
                assert all(before)
            finally:
                attached.close()
            with Prometheus([f"127.0.0.1:{port}"], interval=1) as prometheus:
                busy_vm = "busy"
                assert wait_for(
                    lambda: prometheus.query(
                        f'rate(kvm_vcpu_exits_total{{vm="{busy_vm}"}}[5s]) > 0'
                    ),
                    timeout=30,
                )
                series = prometheus.query("kvm_vcpu_exits_total")
                assert {(s["metric"]["vm"], s["metric"]["vcpu"]) for s in series} >= {
                    (busy_vm, "0"),
                    (busy_vm, "1"),
                }
                assert prometheus.query('vmstats_up{vm="stuck"} == 0')
                assert prometheus.query('up{job="vmstats"} == 1')
        finally:
            assert stop_process(exporter) == 0


def _up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


QEMU10_REASON = qemu10_unavailable_reason()


@pytest.mark.qemu
@pytest.mark.skipif(QEMU10_REASON is not None, reason=f"no QEMU 10.0: {QEMU10_REASON}")
@pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")
def test_qemu_10_through_serve_metrics(tmp_path: Path) -> None:
    port = free_port()
    with qemu10_vm(2, extra_args=["-name", "web10"]) as vm:
        daemon = start("serve", "--run-dir", str(tmp_path / "run"), "--scan-interval", "0.3",
                       "--qmp", str(vm.qmp_path), "--metrics", f"127.0.0.1:{port}")  # fmt: skip
        try:
            # served by its fds first, then (the same scan, after a probe) with its socket
            source = 'source="fds (vcpu) + QMP (vm)"'
            assert wait_for(lambda: _up(port) and source in scrape(port)[0])
            text, _ = scrape(port)
            checked = promtool("check", "metrics", stdin=text.encode())
            assert checked.returncode == 0, checked
            assert not checked.stdout + checked.stderr, checked
            assert 'vm="web10"' in text
            assert 'qemu_version="10.0.' in text
            with Prometheus([f"127.0.0.1:{port}"], interval=1) as prometheus:
                assert wait_for(lambda: prometheus.query('kvm_vm_pages_4k{vm="web10"}'))
                quantile = (
                    "histogram_quantile(0.9, sum by (le) "
                    '(rate(kvm_vcpu_halt_wait_hist_seconds_bucket{vm="web10"}[10s])))'
                )
                # SeaBIOS idles in HLT once it finds nothing to boot (a few seconds)
                assert wait_for(
                    lambda: any(
                        math.isfinite(float(r["value"][1])) for r in prometheus.query(quantile)
                    ),
                    timeout=45,
                )
        finally:
            assert stop_process(daemon) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve finds VMs by their fds as root")
def test_a_vm_that_exits_under_serve_goes_stale_and_is_never_down(tmp_path: Path) -> None:
    """What VmstatsVmDown's text says (contrib/prometheus/rules.yml): a VM that exits is no
    longer exported, so its series go stale in a real Prometheus; vmstats_up never says 0
    for it (0 is for a VM that cannot be read), and the alert cannot fire for an exit."""
    from vmstats.serve.discover import vm_name

    port = free_port()
    daemon = start("serve", "--run-dir", str(tmp_path / "run"), "--scan-interval", "0.3",
                   "--metrics", f"127.0.0.1:{port}")  # fmt: skip
    try:
        with DemoServer(vcpus=1, rate=0.001) as demo:
            name = vm_name(demo.vm_pid)
            up = f'vmstats_up{{vm="{name}"}}'
            with Prometheus([f"127.0.0.1:{port}"], interval=1) as prometheus:
                assert wait_for(lambda: prometheus.query(f"{up} == 1"), timeout=30)
                kill(demo.vm_pid)
                assert wait_for(lambda: not prometheus.query(up), timeout=30)  # stale
                assert prometheus.query(f"max_over_time({up}[5m])")  # it was there...
                assert not prometheus.query(f"min_over_time({up}[5m]) == 0")  # ...never 0
    finally:
        assert stop_process(daemon) == 0


def test_prometheus_scrapes_over_tls_with_basic_auth_and_the_wrong_ones_fail(
    tmp_path: Path,
) -> None:
    """A real Prometheus with exporter-toolkit's client side: its scrape configs'
    ``tls_config`` and ``basic_auth``.  The right credentials scrape; no credentials, a
    wrong password, a client certificate of another CA and plain HTTP each fail, with
    the reason Prometheus gives, and do not disturb the good scrape."""
    pki = make_pki(tmp_path / "pki")
    password = "a long scrape password"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "pki" / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
                   f"basic_auth_users:\n  prometheus: '{hashed}'\n")  # fmt: skip
    port = free_port()
    target = {"static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client[0]),
           "key_file": str(pki.client[1])}  # fmt: skip
    auth = {"username": "prometheus", "password": password}
    jobs: list[dict[str, Any]] = [
        {"job_name": "good", "scheme": "https", "tls_config": tls, "basic_auth": auth},
        {"job_name": "anonymous", "scheme": "https", "tls_config": {"ca_file": str(pki.ca)}},
        {"job_name": "wrong-password", "scheme": "https", "tls_config": tls,
         "basic_auth": {"username": "prometheus", "password": "guess"}},
        {"job_name": "other-ca", "scheme": "https", "basic_auth": auth,
         "tls_config": {"ca_file": str(pki.ca), "cert_file": str(pki.stranger[0]),
                        "key_file": str(pki.stranger[1])}},
        {"job_name": "plain-http", "scheme": "http"},
    ]  # fmt: skip
    with DemoServer(vcpus=1, rate=0.001) as demo:
        exporter = start("exporter", str(demo.path), "--listen", f"127.0.0.1:{port}",
                         "--web-config", str(web))  # fmt: skip
        try:
            with Prometheus([], jobs=[{**job, **target} for job in jobs]) as prometheus:

                def scraped() -> bool:
                    targets = prometheus.targets()
                    return len(targets) == len(jobs) and all(
                        t["health"] != "unknown" for t in targets.values()
                    )

                assert wait_for(scraped, timeout=60)
                targets = prometheus.targets()
                # the exporter may still be starting at the first scrapes: wait for it
                assert wait_for(
                    lambda: prometheus.targets()["good"]["health"] == "up", timeout=60
                ), prometheus.targets()["good"]["lastError"]
                assert wait_for(
                    lambda: all(
                        t["lastError"] for job, t in prometheus.targets().items() if job != "good"
                    )
                )
                targets = prometheus.targets()
                errors = {job: t["lastError"] for job, t in targets.items() if job != "good"}
                assert "401 Unauthorized" in errors["anonymous"]
                assert "401 Unauthorized" in errors["wrong-password"]
                assert "tls" in errors["other-ca"].lower() or "certificate" in errors["other-ca"]
                assert "400 Bad Request" in errors["plain-http"]
                assert all(targets[job]["health"] == "down" for job in errors)
                found = prometheus.query('vmstats_up{job="good"}')
                assert [r["value"][1] for r in found] == ["1"]
        finally:
            assert stop_process(exporter) == 0
