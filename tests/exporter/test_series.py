"""``--series``: a VM's vCPUs summed into one series each, histograms left out, metric
globs kept or dropped; on real KVM stats, checked against the per-vCPU page parsed by
prometheus_client; the file's mistakes named; SIGHUP applying a new file."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kvm.conftest import KVM_REASON, PROGRAM
from vmstats.demo.vm import DemoVM
from vmstats.errors import UsageError
from vmstats.exporter.exposition import Exposition
from vmstats.exporter.scrape import Scrape
from vmstats.exporter.series import SeriesPolicy, policy_of, read_series
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.serve.reader import MonitorReader
from vmstats.stats.registry import StatsRegistry
from vmstats.testing.hostile import DemoServer, wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import stop_process

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_page(port: int) -> bytes:
    """The page at /metrics, or nothing while it cannot be had (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            return bytes(reply.read())
    except OSError:
        return b""


def samples(page: bytes) -> Samples:
    """Every sample of a page: (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def per_vm(page: Samples) -> Samples:
    """What summing a per-vCPU page by hand gives: vCPU labels dropped, values summed
    (peaks: the highest)."""
    out: Samples = defaultdict(float)
    for (name, labels), value in page.items():
        if name.startswith("kvm_vcpu_"):
            rest = tuple(kv for kv in labels if kv[0] != "vcpu")
            key = (name, rest)
            out[key] = max(out[key], value) if "peak" in name else out[key] + value
    return dict(out)


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")
def test_each_choice_exports_what_it_says_on_real_kvm_stats() -> None:
    with DemoVM(vcpus=3, program=PROGRAM, rate=0) as vm:
        vm.run_rounds(4)  # every vCPU has exits, halts and histogram counts
        registry = StatsRegistry()
        registry.add_stats_callbacks(vm.provider)
        machine = Machine.from_paths(v.qom_path for v in vm.provider.vcpus)
        reader = MonitorReader("web1", Monitor(registry, machine), dict)
        scrape = Scrape([asyncio.run(reader.read())], {}, 0.01)
        writer = Exposition()
        each = samples(writer.render(scrape))
        assert any(dict(labels).get("vcpu") == "2" for _, labels in each)

        writer.policy = SeriesPolicy(vcpus="vm")
        summed = samples(writer.render(scrape))
        vcpu_series = {key: value for key, value in summed.items()
                       if key[0].startswith("kvm_vcpu_")}  # fmt: skip
        assert vcpu_series == per_vm(each)  # every counter, gauge and bucket, summed
        assert not any(dict(labels).get("vcpu") for _, labels in summed)
        exits = summed[("kvm_vcpu_exits_total", (("vm", "web1"),))]
        assert exits >= 3 * 4  # three vCPUs' exits, one series
        assert (
            "kvm_vm_remote_tlb_flush_requests_total",
            (("vm", "web1"),),
        ) in summed  # VM stats stay

        writer.policy = SeriesPolicy(histograms=False)
        names = {name for name, _ in samples(writer.render(scrape))}
        assert not any(name.endswith("_bucket") for name in names)
        assert "kvm_vcpu_exits_total" in names

        writer.policy = SeriesPolicy(include=("kvm_vcpu_*",), exclude=("kvm_vcpu_exits_total",))
        names = {name for name, _ in samples(writer.render(scrape))}
        assert "kvm_vcpu_exits_total" not in names
        assert "kvm_vcpu_halt_exits_total" in names
        assert not any(name.startswith("kvm_vm_") for name in names)
        assert "vmstats_up" in names  # vmstats' own families are always there

        writer.policy = SeriesPolicy()  # back to everything, per vCPU
        assert samples(writer.render(scrape)) == each


@pytest.mark.parametrize(("config", "problem"), [
    ({"vcpu": "vm"}, "unknown settings vcpu"),
    ({"vcpus": "socket"}, "vcpus must be one of each, vm, not 'socket'"),
    ({"histograms": "no"}, "histograms must be true or false"),
    ({"include": "kvm_*"}, "include must be a list of metric name globs"),
    ({"exclude": [""]}, "exclude must be a list of metric name globs"),
])  # fmt: skip
def test_a_wrong_series_file_says_what_is_wrong(config: dict[str, object], problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        policy_of(config, "series.toml")


@pytest.mark.parametrize(("text", "problem"), [
    (b"\xff\xfe", "not UTF-8 text"), (b"vcpus = [", "cannot read"),
    (b"colour = 'blue'", "unknown settings colour")])  # fmt: skip
def test_a_series_file_that_is_not_toml_says_so(tmp_path: Path, text: bytes, problem: str) -> None:
    path = tmp_path / "series.toml"
    path.write_bytes(text)
    with pytest.raises(UsageError, match=problem):
        read_series(path)


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")
def test_the_exporter_takes_a_series_file_and_sighup_changes_it(tmp_path: Path) -> None:
    port = free_port()
    series = tmp_path / "series.toml"
    series.write_text('vcpus = "vm"\nhistograms = false\n')
    log = tmp_path / "exporter.log"
    with DemoServer(vcpus=4, rate=1) as demo, log.open("w") as stderr:
        exporter = subprocess.Popen([sys.executable, "-m", "vmstats", "exporter", str(demo.path),
                                     "--listen", f"127.0.0.1:{port}", "--series", str(series)],
                                    stderr=stderr)  # fmt: skip
        try:
            page = functools.partial(metrics_page, port)

            assert wait_for(lambda: b"kvm_vcpu_exits_total" in page())
            first = page()
            assert b'vcpu="' not in first
            assert b"_bucket" not in first
            series.write_text("vcpus = 'each'\n")
            exporter.send_signal(signal.SIGHUP)
            assert wait_for(lambda: b'kvm_vcpu_exits_total{vcpu="3"' in page())
            assert b"_bucket" in page()
            series.write_text("vcpus = 'socket'\n")  # wrong: the one in use stays
            exporter.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "keeping the one in use" in log.read_text())
            assert b'vcpu="3"' in page()
        finally:
            assert stop_process(exporter) == 0
    assert "--series: " in log.read_text()
    wrong = subprocess.run([sys.executable, "-m", "vmstats", "exporter", str(tmp_path),
                            "--listen", "127.0.0.1:0", "--series", str(series)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wrong.returncode == 2
    assert "--series: " in wrong.stderr
    assert "vcpus must be one of each, vm, not 'socket'" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")
@pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")
def test_serve_rereads_its_series_file_on_sighup_without_a_config(tmp_path: Path) -> None:
    """``serve --metrics --series FILE`` and no ``--config``: SIGHUP still rereads the
    series file (and the web config), as the exporter does."""
    port = free_port()
    series = tmp_path / "series.toml"
    series.write_text('vcpus = "vm"\n')
    log = tmp_path / "serve.log"
    page = functools.partial(metrics_page, port)

    with DemoServer(vcpus=2, rate=1), log.open("w") as stderr:
        daemon = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                                   str(tmp_path / "run"), "--scan-interval", "0.3", "--metrics",
                                   f"127.0.0.1:{port}", "--series", str(series)],
                                  stderr=stderr)  # fmt: skip
        try:
            assert wait_for(lambda: b"kvm_vcpu_exits_total{vm=" in page(), timeout=30)
            series.write_text('vcpus = "each"\n')
            daemon.send_signal(signal.SIGHUP)
            assert wait_for(lambda: b'kvm_vcpu_exits_total{vcpu="1"' in page(), timeout=30)
        finally:
            assert stop_process(daemon) == 0
    assert "Traceback" not in log.read_text()


def test_summing_a_vms_vcpus_sums_counts_and_buckets_and_keeps_the_highest_peak() -> None:
    from vmstats.exporter.mapping import Metric, metric_for
    from vmstats.exporter.series import summed
    from vmstats.stats.model import StatsSchemaValue, StatsType, StatsUnit

    def metric(kind: StatsType, unit: StatsUnit | None = None) -> Metric:
        return metric_for("kvm_vcpu", StatsSchemaValue("x", kind, unit))

    assert summed(metric(StatsType.CUMULATIVE), [3, 4, 5]) == 12
    assert summed(metric(StatsType.INSTANT, StatsUnit.BOOLEAN), [True, False, True]) == 2
    assert summed(metric(StatsType.PEAK), [3, 9, 5]) == 9
    assert summed(metric(StatsType.LOG2_HISTOGRAM), [[1, 2], [0, 1, 4]]) == [1, 3, 4]
