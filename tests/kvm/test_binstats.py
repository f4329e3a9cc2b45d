"""The binary stats parser on crafted files: every malformation is an error naming it.

Files are written to disk and read through a real fd, as the kernel's would be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvm.statsfile import (
    BOOLEAN,
    BYTES,
    CYCLES,
    INSTANT,
    LINEAR_HIST,
    LOG_HIST,
    PEAK,
    POW2,
    SECONDS,
    Desc,
    StatsFileSpec,
)
from vmstats.errors import BinaryStatsError
from vmstats.kvm.binstats import FIRST_READ, LayoutCache, StatsFile


@pytest.fixture
def open_spec(tmp_path: Path) -> Iterator[object]:
    fds: list[int] = []

    def opener(spec: StatsFileSpec | bytes, cache: LayoutCache | None = None) -> StatsFile:
        raw = spec if isinstance(spec, bytes) else spec.build()
        path = tmp_path / f"stats{len(fds)}"
        path.write_bytes(raw)
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        return StatsFile(fd, cache=cache or LayoutCache())

    yield opener
    for fd in fds:
        os.close(fd)


GOOD = [
    Desc("exits"),
    Desc("blocking", INSTANT | BOOLEAN),
    Desc("wait_hist", LOG_HIST | SECONDS, exponent=-9, size=4),
    Desc("max_size", PEAK | BYTES | POW2, exponent=10),
]


def test_well_formed_file_reads_all_values(open_spec) -> None:  # type: ignore[no-untyped-def]
    f = open_spec(StatsFileSpec(GOOD, values=[7, 1, 10, 11, 12, 13, 99]))
    assert f.id == "kvm-1/vcpu-0"
    assert [d.name for d in f.layout.descriptors] == ["exits", "blocking", "wait_hist", "max_size"]
    assert f.layout.data_size == 56
    assert f.read() == (7, 1, 10, 11, 12, 13, 99)


def test_descriptors_out_of_offset_order_are_read_by_offset(open_spec) -> None:  # type: ignore[no-untyped-def]
    spec = StatsFileSpec([Desc("b", offset=8), Desc("a", offset=0)], values=[1, 2])
    f = open_spec(spec)
    assert {d.name: f.read()[d.index] for d in f.layout.descriptors} == {"a": 1, "b": 2}


def test_layout_is_parsed_once_and_shared(tmp_path: Path) -> None:
    cache = LayoutCache()
    fds = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(StatsFileSpec(GOOD, ident=f"kvm-1/vcpu-{i}".encode()).build())
        fds.append(os.open(path, os.O_RDONLY))
    files = [StatsFile(fd, cache=cache) for fd in fds]
    assert files[0].layout is files[1].layout is files[2].layout
    assert [f.id for f in files] == ["kvm-1/vcpu-0", "kvm-1/vcpu-1", "kvm-1/vcpu-2"]
    other = tmp_path / "other"
    other.write_bytes(StatsFileSpec([Desc("other")]).build())
    fds.append(os.open(other, os.O_RDONLY))
    assert StatsFile(fds[-1], cache=cache).layout is not files[0].layout
    for fd in fds:
        os.close(fd)


def test_descriptors_that_differ_behind_the_same_header_are_another_layout(open_spec) -> None:  # type: ignore[no-untyped-def]
    """Files of one header (as many stats, at the same offsets) whose descriptors differ,
    one after the other as a scan reads them: each is read by its own (a kernel whose
    stats were renamed, or a file made to look like the last one read)."""
    cache = LayoutCache()
    renamed = [Desc("exits"), Desc("blocking", INSTANT | BOOLEAN),
               Desc("wait_hist", LOG_HIST | SECONDS, exponent=-9, size=4),
               Desc("max_bytes", PEAK | BYTES | POW2, exponent=10)]  # fmt: skip
    first, second, third = (open_spec(StatsFileSpec(descs), cache)
                            for descs in (GOOD, renamed, GOOD))  # fmt: skip
    assert first.layout.header == second.layout.header
    assert [d.name for d in second.layout.descriptors][-1] == "max_bytes"
    assert [d.name for d in third.layout.descriptors][-1] == "max_size"
    assert third.layout is first.layout


def test_blocks_past_the_first_read_are_read_too(open_spec) -> None:  # type: ignore[no-untyped-def]
    """One read of a file's start usually holds its header, id and descriptors; a file
    that puts them further (the ABI allows any offsets) reads them where they are."""
    far = FIRST_READ + 1000
    spec = StatsFileSpec(GOOD, values=[7, 1, 10, 11, 12, 13, 99], id_offset=far,
                         desc_offset=far + 48, ident=b"kvm-9/vcpu-3")  # fmt: skip
    f = open_spec(spec)
    assert f.id == "kvm-9/vcpu-3"
    assert [d.name for d in f.layout.descriptors] == ["exits", "blocking", "wait_hist", "max_size"]
    assert f.read() == (7, 1, 10, 11, 12, 13, 99)


def test_a_cached_layout_is_not_taken_for_a_header_that_differs(open_spec) -> None:  # type: ignore[no-untyped-def]
    """The same descriptors behind another header are checked anew: a data block over
    the descriptors is an error even once the good file's layout is cached, and an id
    somewhere else is read there."""
    cache = LayoutCache()
    good = open_spec(StatsFileSpec(GOOD), cache)
    with pytest.raises(BinaryStatsError, match="the descriptors and data blocks overlap"):
        open_spec(StatsFileSpec(GOOD, data_offset=80), cache)
    moved = open_spec(StatsFileSpec(GOOD, id_offset=500, desc_offset=72, data_offset=600,
                                    ident=b"kvm-2/vcpu-5"), cache)  # fmt: skip
    assert (good.id, moved.id) == ("kvm-1/vcpu-0", "kvm-2/vcpu-5")


MALFORMED = [
    ("empty file", b"", "failed to read stats header: expected 24 actual 0"),
    (
        "truncated header",
        StatsFileSpec(GOOD).build()[:20],
        "failed to read stats header: expected 24 actual 20",
    ),
    ("huge num_desc", StatsFileSpec(GOOD, num_desc=10**9), "num_desc 1000000000 is not sane"),
    (
        "num_desc beyond the file",
        StatsFileSpec(GOOD, num_desc=50, truncate_to=400),
        "failed to read stats descriptors: expected 3200 actual",
    ),
    ("name_size 0", StatsFileSpec(GOOD, name_size=0), "name_size 0 is not sane"),
    ("name_size huge", StatsFileSpec(GOOD, name_size=1 << 20), "is not sane"),
    (
        "offset inside the header",
        StatsFileSpec(GOOD, desc_offset=8),
        "desc_offset 8 is inside the header",
    ),
    (
        "name not NUL-terminated",
        StatsFileSpec([Desc("x", raw_name=b"y" * 48)]),
        "descriptor 0: name is not NUL-terminated",
    ),
    ("empty name", StatsFileSpec([Desc("")]), "descriptor 0: empty name"),
    (
        "non-ASCII name",
        StatsFileSpec([Desc("x", raw_name="é".encode() + b"\0")]),
        "descriptor 0: name is not ASCII",
    ),
    ("duplicate name", StatsFileSpec([Desc("a"), Desc("a")]), "descriptor 1 ('a'): duplicate name"),
    ("size 0", StatsFileSpec([Desc("a", size=0)]), "descriptor 0 ('a'): size 0"),
    ("misaligned offset", StatsFileSpec([Desc("a", offset=4)]), "offset 4 is not 8-byte aligned"),
    (
        "overlapping values",
        StatsFileSpec([Desc("a", size=2, offset=0), Desc("b", offset=8)]),
        "descriptors 'a' and 'b' overlap",
    ),
    (
        "offset far out of range",
        StatsFileSpec([Desc("a", offset=1 << 30)]),
        "data block of 1073741832 bytes is too large",
    ),
    (
        "data beyond the end of the file",
        StatsFileSpec(GOOD, truncate_to=350),
        "failed to read data: expected 56 actual",
    ),
    ("id not NUL-terminated", StatsFileSpec(GOOD, ident=b"k" * 48), "id is not NUL-terminated"),
    (
        "data block overlaps descriptors",
        StatsFileSpec(GOOD, data_offset=80),
        "the descriptors and data blocks overlap",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_a_named_error(open_spec, case: str, spec: object, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BinaryStatsError) as info:
        open_spec(spec).read()
    assert message in str(info.value)
    assert str(info.value).startswith("KVM stats: ")


def test_file_shrinking_after_open_is_an_error_not_a_wrong_value(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(StatsFileSpec(GOOD).build())
    fd = os.open(path, os.O_RDONLY)
    try:
        f = StatsFile(fd, cache=LayoutCache())
        os.truncate(path, f.layout.header.data_offset + 8)
        with pytest.raises(BinaryStatsError, match="failed to read data: expected 56 actual 8"):
            f.read()
    finally:
        os.close(fd)


def test_closed_fd_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(StatsFileSpec(GOOD).build())
    fd = os.open(path, os.O_RDONLY)
    f = StatsFile(fd, cache=LayoutCache())
    os.close(fd)
    with pytest.raises(BinaryStatsError, match="failed to read data: Bad file descriptor"):
        f.read()


@pytest.mark.parametrize("cycles_flags", [CYCLES, LINEAR_HIST])
def test_flag_helpers(open_spec, cycles_flags: int) -> None:  # type: ignore[no-untyped-def]
    f = open_spec(StatsFileSpec([Desc("a", cycles_flags | 0x1000)]))
    desc = f.layout.descriptors[0]
    assert desc.unknown_bits == 0x1000
    assert desc.type_bits == cycles_flags & 0xF


def test_unknown_header_flags_are_logged_once_and_ignored(open_spec, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("WARNING", logger="vmstats.kvm.binstats")
    cache = LayoutCache()  # the warning belongs to the cache that parsed the layout
    first = open_spec(StatsFileSpec(GOOD, flags=0x8000, values=[7]), cache)
    open_spec(StatsFileSpec(GOOD, flags=0x8000, values=[7]), cache)
    assert first.read()[0] == 7
    assert [r.getMessage() for r in caplog.records].count(
        "KVM stats header has unknown flags 0x8000; ignored"
    ) == 1
