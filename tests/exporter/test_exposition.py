"""Our exposition writer gives the very bytes prometheus_client gives for the same families,
in both formats: on real KVM stats (fresh, cached, and changed), on odd names and values
no kernel gives today, and on random stats (hypothesis)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.exporter.reference_collector import families
from tests.exporter.test_mapping import ns
from tests.kvm.conftest import KVM_REASON, PROGRAM
from vmstats.demo.vm import DemoVM
from vmstats.exporter.exposition import Exposition, _Listed
from vmstats.exporter.mapping import MetricTable
from vmstats.exporter.scrape import Scrape
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import Sample
from vmstats.serve.reader import MonitorReader
from vmstats.stats.model import (
    StatsProvider,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
    StatsValue,
)
from vmstats.stats.registry import StatsRegistry


def reference(scrape: Scrape, openmetrics: bool) -> bytes:
    """What prometheus_client writes for the reference collector's families."""
    registry = _Listed(list(families(scrape, MetricTable())))
    if openmetrics:
        return generate_openmetrics(registry)  # type: ignore[no-any-return,no-untyped-call]
    return generate_latest(registry)


def assert_same(writer: Exposition, scrape: Scrape) -> None:
    for openmetrics in (False, True):
        ours = writer.render(scrape, openmetrics)
        assert ours == reference(scrape, openmetrics), openmetrics


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")
def test_real_kvm_stats_fresh_cached_and_changed() -> None:
    with DemoVM(vcpus=3, program=PROGRAM, rate=0) as one, DemoVM(vcpus=1, rate=0) as two:
        readers = []
        for name, vm in (("web1", one), ("web2", two)):
            registry = StatsRegistry()
            registry.add_stats_callbacks(vm.provider)
            machine = Machine.from_paths(v.qom_path for v in vm.provider.vcpus)
            readers.append(MonitorReader(name, Monitor(registry, machine), lambda: {"pid": "1"}))

        async def read() -> Scrape:
            return Scrape([await r.read() for r in readers], {"db3": "gone"}, 0.0125)

        writer = Exposition()
        first = asyncio.run(read())
        assert_same(writer, first)
        assert_same(writer, first)  # from the cache
        still = asyncio.run(read())  # nothing ran: each VM's very values, for the cache
        assert all(map(lambda a, b: a.sample.values is b.sample.values, first.readings,
                       still.readings))  # fmt: skip
        one.run_rounds(5)  # counters move: the changed vCPUs are written again
        assert_same(writer, asyncio.run(read()))
        assert b'kvm_vcpu_exits_total{vcpu="2",vm="web1"}' in writer.render(first)


SCHEMA = [
    StatsSchemaValue("exits", StatsType.CUMULATIVE),
    StatsSchemaValue("blocking", StatsType.INSTANT, StatsUnit.BOOLEAN),
    StatsSchemaValue("rmap_peak", StatsType.PEAK, StatsUnit.BYTES, 2, 10),
    ns("halt_wait_ns", StatsType.CUMULATIVE),
    ns("halt_wait_hist", StatsType.LOG2_HISTOGRAM),
    StatsSchemaValue("size_hist", StatsType.LINEAR_HISTOGRAM, StatsUnit.BYTES, bucket_size=64),
    StatsSchemaValue("tsc", StatsType.INSTANT, StatsUnit.CYCLES),
]


def reading(name: str, stats: list[tuple[str, StatsValue]], paths: list[str]) -> VmReading:
    schemas = [StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, SCHEMA)]
    sample = Sample(0.0, {("kvm", "vcpu", path): dict(stats) for path in paths})
    return VmReading(name, schemas, sample, {"/machine/unattached/device[0]": 0},
                     {"pid": "42", "qemu_version": "7.2.0", "source": 'odd "source"'})  # fmt: skip


def test_odd_names_values_and_stats_no_schema_describes() -> None:
    stats: list[tuple[str, StatsValue]] = [
        ("tsc", 2**64 - 1), ("size_hist", [0, 3, 1]), ("halt_wait_hist", [1, 0, 0, 7]),
        ("halt_wait_ns", 123456789), ("rmap_peak", 3), ("blocking", True), ("exits", 0),
        ("brand_new", 5), ("brand_new_hist", [2, 2]),
    ]  # fmt: skip
    scrape = Scrape([reading('we"ird\\vm\nname', stats, ["/machine/unattached/device[0]",
                                                      "/machine/peripheral/cpu9"])],
                    {}, 1e-7)  # fmt: skip
    assert_same(Exposition(), scrape)


VALUES = st.one_of(st.integers(0, 2**64 - 1), st.booleans(),
                   st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40))  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(VALUES, min_size=len(SCHEMA), max_size=len(SCHEMA)),
    name=st.text(min_size=1, max_size=12),
    vcpus=st.integers(1, 4),
)
def test_random_stats_give_the_same_bytes(values: list[StatsValue], name: str, vcpus: int) -> None:
    stats = [(s.name, v) for s, v in zip(SCHEMA, values, strict=True)]
    paths = [f"/machine/unattached/device[{i}]" for i in range(vcpus)]
    writer = Exposition()
    scrape = Scrape([reading(name, stats, paths)], {"other": "x"}, 0.5)
    assert_same(writer, scrape)
    assert_same(writer, scrape)


def test_each_stat_that_moves_is_written_again_and_only_the_moved_vm() -> None:
    """Two VMs scraped again after one's stats moved (a counter, a histogram and the
    cumulative stat that is its sum, a histogram without one): the bytes are still
    prometheus_client's, and the VM that stood still is the very text it was."""
    still: list[tuple[str, StatsValue]] = [
        ("exits", 1), ("halt_wait_hist", [1, 0, 2]), ("halt_wait_ns", 500),
        ("size_hist", [0, 1]), ("blocking", False)]  # fmt: skip
    moved: list[tuple[str, StatsValue]] = [
        ("exits", 2), ("halt_wait_hist", [1, 1, 2]), ("halt_wait_ns", 900),
        ("size_hist", [0, 2]), ("blocking", True)]  # fmt: skip
    paths = ["/machine/unattached/device[0]"]
    writer = Exposition()
    assert_same(writer, Scrape([reading("a", still, paths), reading("b", still, paths)], {}, 1.0))
    kept = writer._vms["a"].blocks
    for changed in (moved, [*moved[:2], ("halt_wait_ns", 901), *moved[3:]]):  # the sum alone
        assert_same(writer, Scrape([reading("a", still, paths), reading("b", changed, paths)],
                                   {}, 1.0))  # fmt: skip
        assert writer._vms["a"].blocks is kept


def test_a_vm_read_as_the_very_values_of_last_time_is_still_labelled_as_it_is_now() -> None:
    """A reader gives the very values while a VM stands still: its text is kept, unless
    what else the labels are made of changed (the vCPUs' numbers: a QEMU socket found
    since); a VM that went leaves the page."""
    stats: list[tuple[str, StatsValue]] = [("exits", 3), ("halt_wait_hist", [1, 2])]
    paths = ["/machine/unattached/device[0]", "/machine/unattached/device[1]"]
    a, b = reading("a", stats, paths), reading("b", stats, paths[:1])
    writer = Exposition()
    assert_same(writer, Scrape([a, b], {}, 1.0))
    renumbered = VmReading("a", a.schemas, Sample(1.0, a.sample.values),
                           {paths[0]: 4, paths[1]: 5}, a.info)  # fmt: skip
    assert_same(writer, Scrape([renumbered, b], {}, 1.0))
    assert b'kvm_vcpu_exits_total{vcpu="5",vm="a"} 3.0' in writer.render(Scrape([renumbered, b],
                                                                                {}, 1.0))  # fmt: skip
    assert_same(writer, Scrape([renumbered], {}, 1.0))
    assert b'vm="b"' not in writer.render(Scrape([renumbered], {}, 1.0))


def test_exit_reasons_are_one_family_told_apart_by_event_and_reason() -> None:
    """The ``tracepoints`` provider's stats (vmstats' extension): the same bytes as
    prometheus_client's for ``kvm_vcpu_exit_reasons_total{event,reason}`` and
    ``kvm_vcpu_tracepoint_events_total{event}``, beside the kvm provider's."""
    names = ["kvm_userspace_exit(IO)", "kvm_userspace_exit(HLT)", 'kvm_exit(odd"one)',
             "kvm_userspace_exit(other)", "kvm_pio"]  # fmt: skip
    schema = [StatsSchemaValue(n, StatsType.CUMULATIVE) for n in names][::-1]
    paths = ["/machine/unattached/device[0]", "/machine/unattached/device[2]"]
    base = reading("web1", [("exits", 9)], paths)
    values = dict(base.sample.values)
    for index, path in enumerate(paths):
        values[("tracepoints", "vcpu", path)] = {n: 10 * index + i for i, n in enumerate(names)}
    exits = VmReading("web1", [StatsSchema(StatsProvider.TRACEPOINTS, StatsTarget.VCPU, schema),
                               *base.schemas], Sample(0.0, values), base.vcpus, base.info)  # fmt: skip
    scrape = Scrape([exits], {}, 0.1)
    assert_same(Exposition(), scrape)
    text = Exposition().render(scrape).decode()
    assert ('kvm_vcpu_exit_reasons_total{event="kvm_userspace_exit",reason="HLT",vcpu="0",'
            'vm="web1"} 1.0') in text  # fmt: skip
    assert 'kvm_vcpu_exit_reasons_total{event="kvm_exit",reason="odd\\"one",' in text
    assert 'kvm_vcpu_tracepoint_events_total{event="kvm_pio",vcpu="0",vm="web1"} 4.0' in text
    assert text.count("# TYPE kvm_vcpu_exit_reasons_total counter") == 1
    assert 'reason="IO",vcpu="0"' not in text  # 0 there: not exported until it occurs
    writer = Exposition()
    assert_same(writer, scrape)  # the zeros, planned
    occurred = {**values, ("tracepoints", "vcpu", paths[0]): dict.fromkeys(names, 1)}
    moved = Scrape([VmReading("web1", exits.schemas, Sample(1.0, occurred), base.vcpus,
                              base.info)], {}, 0.1)  # fmt: skip
    assert_same(writer, moved)  # by the plan: the reasons that occurred appear
    assert 'reason="IO",vcpu="0",vm="web1"} 1.0' in writer.render(moved).decode()
    assert_same(writer, scrape)  # and go again (a VM served anew)


def test_the_text_kept_between_scrapes_is_about_one_object_per_stat_for_the_collector() -> None:
    """The exposition keeps each stat's text for the next scrape: at 256 VMs, about
    100,000 of them.  Python's cyclic collector walks every container kept, and each of
    its full collections made every other client of the loop wait (190 ms there with
    three containers kept per stat, 92 ms with one).  Scraped fresh, then with every
    value changed (the remade path): what is left for the collector to walk."""
    counters = [StatsSchemaValue(f"counter{i}", StatsType.CUMULATIVE) for i in range(40)]
    schemas = [StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, [*SCHEMA, *counters])]
    first: dict[str, StatsValue] = {
        "exits": 1, "blocking": False, "rmap_peak": 3, "halt_wait_ns": 10,
        "halt_wait_hist": [1, 0, 2], "size_hist": [0, 1], "tsc": 5,
        **{c.name: 1 for c in counters}}  # as many stats as a vCPU has  # fmt: skip
    moved = {n: [x + 1 for x in v] if isinstance(v, list) else v + 1 for n, v in first.items()}
    objects = [("kvm", "vcpu", f"/machine/unattached/device[{i}]") for i in range(64)]
    writer = Exposition()
    gc.collect()
    before = len(gc.get_objects())
    for stats in (first, moved):
        sample = Sample(0.0, {key: dict(stats) for key in objects})
        writer.render(Scrape([VmReading("vm", schemas, sample, {})], {}, 0.5))
    del sample
    gc.collect()
    kept = len(gc.get_objects()) - before
    assert kept / (len(objects) * len(first)) < 1.5, kept
