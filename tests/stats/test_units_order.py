"""Units and natural order, table-driven: what a person sees for each kind of stat."""

from __future__ import annotations

import pytest

from vmstats.stats.model import (
    StatsProvider,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)
from vmstats.stats.order import natural_results, natural_schema_values, natural_stats
from vmstats.stats.units import bucket_ranges, hmp_unit, human, iec_prefix, scale, si_prefix

NS = StatsSchemaValue("t_ns", StatsType.CUMULATIVE, StatsUnit.SECONDS, 10, -9)
BYTES = StatsSchemaValue("b", StatsType.INSTANT, StatsUnit.BYTES)
KIB = StatsSchemaValue("k", StatsType.INSTANT, StatsUnit.BYTES, 2, 10)
CYCLES = StatsSchemaValue("c", StatsType.CUMULATIVE, StatsUnit.CYCLES)
PLAIN = StatsSchemaValue("n", StatsType.CUMULATIVE)
THOUSANDS = StatsSchemaValue("k", StatsType.CUMULATIVE, None, 10, 3)
LOG2 = StatsSchemaValue("h", StatsType.LOG2_HISTOGRAM, StatsUnit.SECONDS, 10, -9)
LINEAR = StatsSchemaValue("l", StatsType.LINEAR_HISTOGRAM, None, None, 0, 10)


@pytest.mark.parametrize(("value", "schema", "text"), [
    (1_500_000, NS, "1.5 ms"),
    (0, NS, "0 s"),
    (999, NS, "999 ns"),
    (2_000_000_000, NS, "2 s"),
    (3 << 20, BYTES, "3 MiB"),
    (512, BYTES, "512 B"),
    (3, KIB, "3 KiB"),
    (5, CYCLES, "5 cycles"),
    (1_234_567, PLAIN, "1,234,567"),
    (1_234_567, None, "1,234,567"),
    (7, THOUSANDS, "7000"),
    (True, None, "yes"),
    (False, PLAIN, "no"),
])  # fmt: skip
def test_human(value: int, schema: StatsSchemaValue | None, text: str) -> None:
    assert human(value, schema) == text


@pytest.mark.parametrize(("schema", "text"), [
    (NS, "ns"), (BYTES, "B"), (KIB, "KiB"), (CYCLES, "cycles"), (PLAIN, ""),
    (THOUSANDS, "* 10^3"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.BYTES, 2, 12), "* 2^12 bytes"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.CYCLES, 10, 3), "* 10^3 cycles"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.BOOLEAN), "boolean"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.SECONDS), "s"),
])  # fmt: skip
def test_hmp_unit_is_qemus(schema: StatsSchemaValue, text: str) -> None:
    assert hmp_unit(schema) == text


@pytest.mark.parametrize(("exponent", "si", "iec"), [
    (-9, "n", None), (0, "", ""), (3, "K", None), (10, None, "Ki"), (-18, "a", None),
    (19, None, None), (-1, None, None), (60, None, "Ei"), (70, None, None),
])  # fmt: skip
def test_prefixes(exponent: int, si: str | None, iec: str | None) -> None:
    assert (si_prefix(exponent), iec_prefix(exponent)) == (si, iec)


def test_scale_applies_base_and_exponent() -> None:
    assert scale(1500, NS) == pytest.approx(1.5e-6)
    assert scale(3, KIB) == 3072
    assert scale(3, None) == 3


@pytest.mark.parametrize(("schema", "buckets", "labels"), [
    (LOG2, 5, ["0 s - 1 ns", "1 ns - 2 ns", "2 ns - 4 ns", "4 ns - 8 ns", ">= 8 ns"]),
    (LINEAR, 3, ["0 - 10", "10 - 20", ">= 20"]),
    (StatsSchemaValue("h", StatsType.LOG2_HISTOGRAM), 3, ["0 - 1", "1 - 2", ">= 2"]),
])  # fmt: skip
def test_bucket_ranges_follow_the_kernel_abi(schema: StatsSchemaValue, buckets: int,
                                             labels: list[str]) -> None:  # fmt: skip
    assert bucket_ranges(schema, buckets) == labels


def test_natural_order_undoes_qemus_prepending() -> None:
    wire = [
        StatsResult(StatsProvider.KVM, [("b", 2), ("h", [3, 2, 1])], "/cpu1"),
        StatsResult(StatsProvider.KVM, [("b", 4), ("a", True)], "/cpu0"),
    ]
    assert natural_stats(wire[0]) == [("h", [1, 2, 3]), ("b", 2)]
    assert [(r.qom_path, list(r.stats)) for r in natural_results(wire)] == [
        ("/cpu0", [("a", True), ("b", 4)]),
        ("/cpu1", [("h", [1, 2, 3]), ("b", 2)]),
    ]
    schema = StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, [NS, PLAIN])
    assert natural_schema_values(schema) == [PLAIN, NS]
