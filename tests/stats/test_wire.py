"""The fast wire path (compiled stats templates) against the generic encoder, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmstats.qapi.output import OutputEncoder
from vmstats.stats.model import StatsValue
from vmstats.stats.schema import stats_schema
from vmstats.stats.wire import BOOLEAN, LIST, SCALAR, EncodedStats, StatsTemplate

GENERIC = OutputEncoder(stats_schema())
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
NAMES = st.text(min_size=1, max_size=12) | st.sampled_from(["exits", "a%d", "%s%%", "é\x7f\x00"])


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[tuple[str, int, int, int]], list[int],
                                      list[tuple[str, StatsValue]]]:  # fmt: skip
    """Stats as QAPI has them, and the same laid out as a template reads them: entries
    (name, shape, start, stop) over a value tuple (a boolean any non-zero word, buckets
    stored lowest first as the kernel has them, sent highest first as QEMU writes them)."""
    names = draw(st.lists(NAMES, max_size=8, unique=True))
    stats: list[tuple[str, StatsValue]] = []
    entries: list[tuple[str, int, int, int]] = []
    values: list[int] = []
    for name in names:
        shape = draw(st.sampled_from([SCALAR, BOOLEAN, LIST]))
        start = len(values)
        value: StatsValue
        if shape == SCALAR:
            value = word = draw(U64)
            values.append(word)
        elif shape == BOOLEAN:
            value = draw(st.booleans())
            values.append(draw(st.integers(1, 3)) if value else 0)
        else:
            value = buckets = draw(st.lists(U64, min_size=2, max_size=6))
            values += reversed(buckets)
        stats.append((name, value))
        entries.append((name, shape, start, len(values)))
    return entries, values, stats


@given(layouts())
def test_template_renders_what_the_generic_encoder_writes(
    layout: tuple[list[tuple[str, int, int, int]], list[int], list[tuple[str, StatsValue]]],
) -> None:
    entries, values, stats = layout
    template = StatsTemplate(entries)
    generic = GENERIC.encode_text("[Stats]", stats)
    assert template.render(values) == generic
    encoded = EncodedStats(template, values)
    assert encoded.__qmp_json__() == generic
    assert GENERIC.encode_text("[Stats]", encoded) == generic  # spliced as it is
    assert list(encoded) == template.decode(values) == stats
