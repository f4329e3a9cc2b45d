"""QDict key order: QEMU writes object keys in hash order, and we must too."""

import json

import pytest

from tests.conftest import CAPTURES
from vmstats.qapi import json as qjson
from vmstats.qapi.ghash import StrHashSet, g_str_hash
from vmstats.qapi.qdict import qdict_deep, qdict_order


@pytest.mark.parametrize(
    ("inserted", "qemu_order"),
    [
        (["provider", "qom-path", "stats"], ["provider", "stats", "qom-path"]),
        (["provider", "target", "stats"], ["provider", "stats", "target"]),
        (["name", "value"], ["name", "value"]),
        (
            ["name", "type", "unit", "base", "exponent", "bucket-size"],
            ["name", "unit", "base", "bucket-size", "exponent", "type"],
        ),
        (["return", "id"], ["return", "id"]),
        (["major", "minor", "micro"], ["micro", "minor", "major"]),  # same bucket: reversed
        (["qemu", "package"], ["qemu", "package"]),
    ],
)
def test_qdict_order_matches_qemu(inserted: list[str], qemu_order: list[str]) -> None:
    assert qdict_order(inserted) == qemu_order


def test_duplicate_key_keeps_first_position() -> None:
    assert qdict_order(["micro", "major", "micro", "minor"]) == qdict_order(
        ["micro", "major", "minor"]
    )


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("[0-9b]*.json")))
def test_every_capture_reencodes_byte_identical(capture: str) -> None:
    """Parsing any QEMU reply and writing it back with QDict order gives QEMU's bytes."""
    raw = (CAPTURES / capture).read_bytes()
    assert raw.endswith(b"\r\n")
    value = json.loads(raw)
    assert (qjson.dumps(qdict_deep(value)) + "\r\n").encode() == raw


def test_g_str_hash_uses_signed_chars() -> None:
    assert g_str_hash("a") == (5381 * 33 + 97) & 0xFFFFFFFF
    assert g_str_hash("\u00e9") == ((5381 * 33 + (0xC3 - 256)) * 33 + (0xA9 - 256)) & 0xFFFFFFFF


def test_strhashset_tracks_removal_and_growth() -> None:
    keys = [f"k{i}" for i in range(40)]
    table = StrHashSet(keys)
    assert sorted(table) == sorted(keys)
    for key in keys[:35]:
        table.discard(key)
    assert sorted(table) == sorted(keys[35:])
    assert len(table) == 5


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("plain", '"plain"'),
        ("\u00e9", '"\\u00E9"'),
        ("\x7f", '"\\u007F"'),
        ("\U0001f600", '"\\uD83D\\uDE00"'),
        ("a\\u00e9", '"a\\\\u00e9"'),  # a literal backslash-u stays as it is
        ('\x01\n\t"', '"\\u0001\\n\\t\\""'),
    ],
)
def test_strings_escaped_like_qemu(text: str, written: str) -> None:
    assert qjson.dumps(text) == written
