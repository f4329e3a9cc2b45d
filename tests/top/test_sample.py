"""Samples and the rows a refresh shows, in process, table-driven."""

from __future__ import annotations

import io
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.reader.sample import Sample, Schemas, take_sample
from vmstats.stats import StatsRegistry, StatsSchemaValue, StatsType, StatsUnit
from vmstats.top.batch import JsonWriter, Output
from vmstats.top.frame import (
    RowMemo,
    StatFilter,
    StatRow,
    TotalMemo,
    quantile,
    sort_rows,
    total_rows,
    vm_rows,
)

EXITS = StatsSchemaValue("exits", StatsType.CUMULATIVE)
PAGES = StatsSchemaValue("pages", StatsType.INSTANT)
PEAK = StatsSchemaValue("peak", StatsType.PEAK)
BUSY = StatsSchemaValue("busy", StatsType.INSTANT, StatsUnit.BOOLEAN)
HIST = StatsSchemaValue("wait_hist", StatsType.LOG2_HISTOGRAM, StatsUnit.SECONDS, 10, -9)
SCHEMAS = Schemas({("kvm", "vcpu", s.name): s for s in (EXITS, PAGES, PEAK, BUSY, HIST)})


def sample(taken: float, exits: tuple[int, int], busy: tuple[bool, bool] = (True, False),
           hist: tuple[list[int], list[int]] = ([0, 0, 0], [0, 0, 0])) -> Sample:  # fmt: skip
    return Sample(taken, {
        ("kvm", "vcpu", vcpu_path(i)): {"exits": exits[i], "pages": 5 + i, "peak": 3 * i,
                                        "busy": busy[i], "wait_hist": hist[i]}
        for i in range(2)
    })  # fmt: skip


def rows(
    base: Sample, prev: Sample, cur: Sample, vcpus: set[str] | None = None
) -> dict[str, StatRow]:
    return {r.name: r for r in vm_rows("vm1", SCHEMAS, base, prev, cur, vcpus)}


def test_counters_rate_over_the_interval_total_since_the_baseline() -> None:
    got = rows(sample(0, (0, 0)), sample(10, (100, 50)), sample(12, (300, 90)))
    exits = got["exits"]
    assert (exits.rate, exits.total) == (120.0, 390)  # (200 + 40) / 2 s; 300 + 90 since 0
    assert exits.rate_text() == "120/s"
    assert exits.total_text() == "390"


@pytest.mark.parametrize(("name", "text"), [("pages", "11"), ("peak", "3"), ("busy", "1/2")])
def test_levels(name: str, text: str) -> None:
    got = rows(sample(0, (0, 0)), sample(1, (0, 0)), sample(2, (0, 0)))
    assert got[name].value_text() == text  # sum, highest, how many are true


def test_a_counter_that_went_back_counts_from_zero() -> None:
    got = rows(sample(0, (1000, 0)), sample(1, (1000, 0)), sample(2, (5, 0)))
    assert got["exits"].total == 5
    assert got["exits"].rate == 5.0


def test_histograms_give_interval_buckets_rate_and_percentiles() -> None:
    before = sample(0, (0, 0), hist=([0, 1, 0], [0, 0, 0]))
    after = sample(2, (0, 0), hist=([0, 5, 0], [0, 2, 2]))
    row = rows(before, before, after)["wait_hist"]
    assert row.buckets == (0, 6, 2)
    assert row.rate == 4.0
    assert row.total == 8
    assert row.percentiles is not None
    assert row.percentiles[0] == pytest.approx(1e-9 * 1 + 1e-9 * 4 / 6)
    assert row.value_text().startswith("p50 1.67 ns p90 2 ns")


def test_vcpus_choose_objects() -> None:
    got = rows(sample(0, (0, 0)), sample(1, (0, 0)), sample(2, (10, 20)), {vcpu_path(1)})
    assert got["exits"].rate == 20.0
    assert got["busy"].value_text() == "0/1"


def test_totals_across_vms() -> None:
    one = vm_rows("a", SCHEMAS, sample(0, (0, 0)), sample(1, (0, 0)), sample(2, (10, 0)))
    two = vm_rows("b", SCHEMAS, sample(0, (0, 0)), sample(1, (0, 0)), sample(2, (5, 5)))
    total = {r.name: r for r in total_rows([one, two])}
    assert total["exits"].rate == 20.0
    assert total["busy"].value_text() == "2/4"
    assert total["peak"].value == 3
    assert total["exits"].vm == "total"


@pytest.mark.parametrize(("counts", "q", "expected"), [
    ([0, 10, 0], 0.5, 1.5), ([4, 0, 0], 0.99, 0.99), ([0, 0, 3], 0.5, 2.0), ([0, 0, 0], 0.5, None),
])  # fmt: skip
def test_quantile(counts: list[int], q: float, expected: float | None) -> None:
    edges = [(0.0, 1.0), (1.0, 2.0), (2.0, None)]
    assert quantile(counts, edges, q) == (None if expected is None else pytest.approx(expected))


def test_filter_is_anchored_and_sorting() -> None:
    keep = StatFilter("halt")
    assert keep("halt_exits")
    assert not keep("exits_halt")
    got = vm_rows("v", SCHEMAS, sample(0, (0, 0)), sample(1, (0, 0)), sample(2, (1, 9)))
    assert [r.name for r in sort_rows(got, "name")][:2] == ["busy", "exits"]
    assert sort_rows(got, "rate")[0].name == "exits"


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


Move = str | tuple[int, int, bool, int]
#: A VM's life between refreshes: per step, how each vCPU's exits and histogram grow (a
#: negative growth: the counter went back), whether ``busy`` flips, or ``r`` (reset).
STEPS = st.lists(
    st.one_of(
        st.just("reset"),
        st.tuples(st.integers(-2, 3), st.integers(0, 2), st.booleans(), st.integers(0, 1)),
    ),
    min_size=1,
    max_size=12,
)


class Life:
    """One VM's samples as a watch keeps them: baseline, previous, current."""

    def __init__(self) -> None:
        self.exits, self.hist, self.busy, self.taken = 0, [0, 0, 0], False, 0.0
        self.base: Sample | None = None
        self.previous: Sample | None = None
        self.current: Sample | None = None

    def step(self, move: Move) -> tuple[Sample, Sample, Sample]:
        if move == "reset" and self.current is not None:
            self.base = self.current
        else:
            grow, hist, flip, bucket = (0, 0, False, 0) if isinstance(move, str) else move
            self.exits = self.exits + grow * 7 if grow >= 0 else 0  # negative: went back
            self.hist = [*self.hist]
            self.hist[bucket] += hist
            self.busy ^= flip
            self.taken += 1
            new = sample(self.taken, (self.exits, 5), (self.busy, False), (self.hist, [0, 1, 0]))
            self.previous, self.current = self.current or new, new
            self.base = self.base or new
        assert self.base
        assert self.previous
        assert self.current
        return self.base, self.previous, self.current


@settings(max_examples=150, deadline=None)
@given(STEPS, STEPS)
def test_rows_kept_between_refreshes_are_the_rows_made_afresh(
    one: list[Move], two: list[Move]
) -> None:
    """Rows and totals used again (their stats did not move) equal rows made from scratch
    at every refresh, and so does the JSON written from them."""
    lives, plans = [Life(), Life()], [one, two]
    memos: list[RowMemo] = [{}, {}]
    totals: TotalMemo = {}
    cached, fresh = io.StringIO(), io.StringIO()
    writer = JsonWriter(Output(cached), skip_zero=False)
    for step in range(max(len(one), len(two))):
        kept: dict[str, list[StatRow]] = {}
        afresh: dict[str, list[StatRow]] = {}
        for index, (life, plan) in enumerate(zip(lives, plans, strict=True)):
            samples = life.step(plan[step] if step < len(plan) else (0, 0, False, 0))
            name = f"vm{index}"
            kept[name] = vm_rows(name, SCHEMAS, *samples, None, memos[index])
            afresh[name] = vm_rows(name, SCHEMAS, *samples)
            assert kept[name] == afresh[name]
        kept_total = total_rows(list(kept.values()), totals)
        assert kept_total == total_rows(list(afresh.values()))
        writer(float(step), kept, kept_total, {})
        JsonWriter(Output(fresh), skip_zero=False)(float(step), afresh, kept_total, {})
    assert cached.getvalue() == fresh.getvalue()


def test_rows_of_stats_that_did_not_move_are_kept() -> None:
    memo: RowMemo = {}
    base = sample(0, (0, 0))
    first = vm_rows("a", SCHEMAS, base, sample(1, (4, 0)), sample(2, (4, 0)), None, memo)
    again = vm_rows("a", SCHEMAS, base, sample(2, (4, 0)), sample(3, (4, 0)), None, memo)
    moved = vm_rows("a", SCHEMAS, base, sample(3, (4, 0)), sample(4, (9, 0)), None, memo)
    assert all(map(operator.is_, first, again))  # the same objects: nothing made again
    assert [r.name for r, m in zip(again, moved, strict=True) if r is not m] == ["exits"]
    assert moved[0].rate == 5.0
    reset = vm_rows("a", SCHEMAS, sample(3, (4, 0)), sample(4, (9, 0)), sample(5, (9, 0)),
                    None, memo)  # fmt: skip
    assert not any(map(operator.is_, reset, moved))  # a new baseline: every row made again


def test_json_lines_are_json_as_json_dumps_writes_it() -> None:
    """The writer joins kept text; each line is still what ``json.dumps`` makes of it."""
    import json

    out = io.StringIO()
    writer = JsonWriter(Output(out), skip_zero=True)
    base = sample(0, (0, 0))
    for taken, exits in ((1, (0, 0)), (2, (5, 0)), (3, (5, 0))):
        cur = sample(taken, exits)
        per_vm = {'odd "name"': vm_rows("a", SCHEMAS, base, base, cur), "b": []}
        writer(taken + 0.5, per_vm, [], {"b": "gone: no socket"})
        base = cur
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert json.dumps(json.loads(line), separators=(",", ":")) == line
    assert json.loads(lines[1])["vms"]['odd "name"']["vcpu.exits"]["rate"] == 5.0
    assert json.loads(lines[2])["vms"]["b"] == {"gone": "gone: no socket"}
