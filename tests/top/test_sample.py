"""Samples and rates, in process: what a live view computes between two refreshes."""

from __future__ import annotations

import pytest

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.stats import StatsRegistry, StatsType
from vmstats.top.sample import Sample, rates, take_sample

TYPES = {
    ("kvm", "vcpu", "exits"): StatsType.CUMULATIVE,
    ("kvm", "vcpu", "pages"): StatsType.INSTANT,
    ("kvm", "vcpu", "busy"): StatsType.INSTANT,
}


def sample(taken: float, exits: int, pages: int = 5) -> Sample:
    key = ("kvm", "vcpu", vcpu_path(0))
    return Sample(taken, {key: {"exits": exits, "pages": pages, "busy": True}}, TYPES)


@pytest.mark.parametrize(("before", "after", "expected"), [
    (sample(10.0, 100), sample(12.0, 300), {"exits": 100.0}),  # per second, counters only
    (sample(10.0, 100), sample(10.5, 100), {"exits": 0.0}),
    (sample(10.0, 100), sample(10.0, 300), None),  # no time passed: no rates at all
    (sample(12.0, 100), sample(10.0, 300), None),
])  # fmt: skip
def test_rates(before: Sample, after: Sample, expected: dict[str, float] | None) -> None:
    got = rates(before, after)
    assert got == ({} if expected is None else {("kvm", "vcpu", vcpu_path(0)): expected})


def test_an_object_new_in_the_second_sample_has_no_rate() -> None:
    after = sample(2.0, 10)
    assert rates(Sample(1.0, {}, TYPES), after) == {}


def test_take_sample_reads_every_object_in_natural_order() -> None:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider(vcpus=3))
    taken = take_sample(registry)
    assert list(taken.values) == [("kvm", "vm", "")] + [
        ("kvm", "vcpu", vcpu_path(i)) for i in range(3)
    ]
    assert taken.values[("kvm", "vcpu", vcpu_path(2))] == {
        "exits": 1002, "wait_ns": 100, "busy": False, "wait_hist": [2, 2, 3],
    }  # fmt: skip
    assert taken.types[("kvm", "vcpu", "exits")] == StatsType.CUMULATIVE
