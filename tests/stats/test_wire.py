"""The fast wire path (compiled stats templates) against the generic encoder, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmstats.qapi.output import OutputEncoder
from vmstats.stats.schema import stats_schema
from vmstats.stats.wire import BOOLEAN, LIST, SCALAR, EncodedStats, StatsTemplate

GENERIC = OutputEncoder(stats_schema())
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
NAMES = st.text(min_size=1, max_size=12) | st.sampled_from(["exits", "a%d", "%s%%", "é\x7f\x00"])


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[tuple[str, int, int, int]], list[int]]:
    """Entries (name, shape, start, stop) over a value tuple, and the values."""
    names = draw(st.lists(NAMES, max_size=8, unique=True))
    entries: list[tuple[str, int, int, int]] = []
    values: list[int] = []
    for name in names:
        shape = draw(st.sampled_from([SCALAR, BOOLEAN, LIST]))
        size = draw(st.integers(2, 6)) if shape == LIST else 1
        start = len(values)
        values += draw(st.lists(U64 if shape != BOOLEAN else st.integers(0, 3),
                                min_size=size, max_size=size))  # fmt: skip
        entries.append((name, shape, start, start + size))
    return entries, values


@given(layouts())
def test_template_renders_what_the_generic_encoder_writes(
    layout: tuple[list[tuple[str, int, int, int]], list[int]],
) -> None:
    entries, values = layout
    template = StatsTemplate(entries)
    generic = GENERIC.encode_text("[Stats]", template.decode(values))
    assert template.render(values) == generic
    encoded = EncodedStats(template, values)
    assert encoded.__qmp_json__() == generic
    assert GENERIC.encode_text("[Stats]", encoded) == generic  # spliced as it is
    assert list(encoded) == template.decode(values)
