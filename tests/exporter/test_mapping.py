"""The naming and layout rules of the Prometheus export, on the live kernel's own
descriptors (never on a list of names: the kernel gains stats) and on stats no kernel
has yet."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.exporter.reference_collector import families
from tests.kvm.conftest import KVM_REASON
from vmstats.demo.vm import DemoVM
from vmstats.exporter.mapping import Kind, MetricTable, metric_for, upper_bounds
from vmstats.exporter.scrape import Scrape
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import Sample
from vmstats.stats.model import (
    StatsProvider,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
    StatsValue,
)

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def ns(name: str, kind: StatsType) -> StatsSchemaValue:
    """A stat in nanoseconds, as the kernel describes its time stats."""
    return StatsSchemaValue(name, kind, StatsUnit.SECONDS, 10, -9)


@pytest.fixture(scope="module")
def kernel_schemas() -> list[StatsSchema]:
    if KVM_REASON is not None:
        pytest.skip(f"no usable KVM: {KVM_REASON}")
    with DemoVM(1, rate=0) as vm:
        return vm.provider.schemas()


@pytest.mark.kvm
def test_every_kernel_stat_gets_one_metric_of_its_own(kernel_schemas: list[StatsSchema]) -> None:
    table = MetricTable().of(kernel_schemas)
    assert len(table) == sum(len(s.stats) for s in kernel_schemas)  # none dropped
    assert len({m.name for m in table.values()}) == len(table)  # none merged
    by_target = {s.target.value: s.stats for s in kernel_schemas}
    for (_, target, _), metric in table.items():
        stat = metric.stat
        assert NAME.match(metric.name)
        assert metric.name.startswith(f"kvm_{target}_")
        assert not metric.name.endswith("_total")  # prometheus_client adds it to counters
        expected = {StatsType.CUMULATIVE: Kind.COUNTER, StatsType.INSTANT: Kind.GAUGE,
                    StatsType.PEAK: Kind.GAUGE, StatsType.LINEAR_HISTOGRAM: Kind.HISTOGRAM,
                    StatsType.LOG2_HISTOGRAM: Kind.HISTOGRAM}[stat.type]  # fmt: skip
        assert metric.kind is expected
        if stat.unit in (StatsUnit.SECONDS, StatsUnit.BYTES, StatsUnit.CYCLES):
            assert metric.name.endswith(f"_{stat.unit.value}")
        if stat.type.is_histogram:
            # _sum from a cumulative stat of the same measure and unit, where there is one
            sums = [s for s in by_target[target]
                    if s.type is StatsType.CUMULATIVE and s.unit == stat.unit
                    and s.name.rsplit("_", 1)[0] == stat.name.rsplit("_", 1)[0]]  # fmt: skip
            assert (metric.sum_of is not None) == bool(sums), stat.name
    names = {m.stat.name: m.name for m in table.values()}
    if "halt_wait_ns" in names:  # the example
        assert names["halt_wait_ns"] == "kvm_vcpu_halt_wait_seconds"


def test_a_stat_no_kernel_has_yet_is_exported_by_the_same_rules() -> None:
    counter = metric_for("kvm_vcpu", ns("warp_drive_ns", StatsType.CUMULATIVE))
    assert (counter.name, counter.kind) == ("kvm_vcpu_warp_drive_seconds", Kind.COUNTER)
    assert counter.value(1_500_000_000) == 1.5
    gauge = metric_for("kvm_vm", StatsSchemaValue("pages_16k", StatsType.PEAK, StatsUnit.BYTES,
                                                  2, 14))  # fmt: skip
    assert (gauge.name, gauge.kind, gauge.value(3)) == ("kvm_vm_pages_16k_bytes", Kind.GAUGE, 49152)
    cycles = metric_for(
        "kvm_vcpu", StatsSchemaValue("tsc_used", StatsType.INSTANT, StatsUnit.CYCLES)
    )
    assert cycles.name == "kvm_vcpu_tsc_used_cycles"
    flag = metric_for("kvm_vcpu", StatsSchemaValue("parked", StatsType.INSTANT, StatsUnit.BOOLEAN))
    assert (flag.name, flag.kind, flag.value(True)) == ("kvm_vcpu_parked", Kind.GAUGE, 1.0)


def test_bucket_bounds_are_the_highest_integer_each_bucket_holds() -> None:
    log2 = ns("wait_hist", StatsType.LOG2_HISTOGRAM)
    assert upper_bounds(log2, 5) == [0, 1e-9, 3e-9, 7e-9, float("inf")]
    linear = StatsSchemaValue("size_hist", StatsType.LINEAR_HISTOGRAM, StatsUnit.BYTES,
                              bucket_size=512)  # fmt: skip
    assert upper_bounds(linear, 4) == [511, 1023, 1535, float("inf")]


def _exposition(schema: list[StatsSchemaValue], values: dict[str, StatsValue]) -> str:
    schemas = [StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, schema)]
    path = "/machine/unattached/device[2]"
    reading = VmReading("web1", schemas, Sample(0.0, {("kvm", "vcpu", path): values}),
                        {path: 1})  # fmt: skip
    scrape = Scrape([reading], {"db2": "no answer in time"}, 0.01)

    class Once:
        def collect(self) -> object:
            return families(scrape, MetricTable())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())  # type: ignore[arg-type]
    openmetrics = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    assert openmetrics.endswith("# EOF\n")
    return generate_latest(registry).decode()


def test_histograms_are_cumulative_with_count_and_sum() -> None:
    hist = ns("halt_wait_hist", StatsType.LOG2_HISTOGRAM)
    total = ns("halt_wait_ns", StatsType.CUMULATIVE)
    lonely = StatsSchemaValue("park_hist", StatsType.LINEAR_HISTOGRAM, bucket_size=10)
    text = _exposition([hist, total, lonely], {"halt_wait_hist": [2, 0, 5, 1],
                                               "halt_wait_ns": 2_000_000_000,
                                               "park_hist": [1, 1]})  # fmt: skip
    labels = 'vcpu="1",vm="web1"'
    for line in [
        f'kvm_vcpu_halt_wait_hist_seconds_bucket{{le="0.0",{labels}}} 2.0',
        f'kvm_vcpu_halt_wait_hist_seconds_bucket{{le="1e-09",{labels}}} 2.0',
        f'kvm_vcpu_halt_wait_hist_seconds_bucket{{le="3e-09",{labels}}} 7.0',
        f'kvm_vcpu_halt_wait_hist_seconds_bucket{{le="+Inf",{labels}}} 8.0',
        f"kvm_vcpu_halt_wait_hist_seconds_count{{{labels}}} 8.0",
        f"kvm_vcpu_halt_wait_hist_seconds_sum{{{labels}}} 2.0",
        f"kvm_vcpu_halt_wait_seconds_total{{{labels}}} 2.0",
        f'kvm_vcpu_park_hist_bucket{{le="9.0",{labels}}} 1.0',
        f"kvm_vcpu_park_hist_count{{{labels}}} 2.0",  # no cumulative to sum: count alone
        'vmstats_up{vm="web1"} 1.0',
        'vmstats_up{vm="db2"} 0.0',
    ]:
        assert line in text.splitlines(), line
    assert "kvm_vcpu_park_hist_sum" not in text
