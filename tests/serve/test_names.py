"""Served names: what a VMM claims, made safe, short and unique, and namespaced by its
owner when an ordinary user runs it, so that no one can take a system VM's name or
another user's (docs/security.md)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmstats.serve.discover import NAME_MAX, OWNER_MARK, served_name

SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.mark.parametrize(
    ("claimed", "served"),
    [
        ("db1", "db1"),
        ("../../etc/passwd", "etc_passwd"),  # no path separator, no leading dots
        ("..", "vm-42"),
        (".hidden", "hidden"),
        ("\x1b[31mred\x1b[0m", "31mred_0m"),  # no control character
        ("caf\ufffd", "caf"),  # invalid UTF-8, as /proc's bytes decode
        ("alice~db1", "alice_db1"),  # a system VM cannot pose as alice's
        ("with space/and\nnewline", "with_space_and_newline"),
    ],
)
def test_hostile_names_are_made_safe(claimed: str, served: str) -> None:
    assert served_name(claimed, 42, None) == served


def test_an_ordinary_users_vm_is_namespaced_and_cannot_take_a_system_name() -> None:
    assert served_name("db1", 42, "alice") == "alice~db1"
    assert served_name("db1", 43, "bob", taken=["db1", "alice~db1"]) == "bob~db1"
    assert served_name("db1", 44, "alice", taken=["alice~db1"]) == "alice~db1-44"
    assert served_name("bob~db1", 45, "alice") == "alice~bob_db1"


def test_long_names_fit_a_socket_path_and_stay_apart() -> None:
    first, second = "a" * 10_000 + "1", "a" * 10_000 + "2"
    one, two = served_name(first, 1, None), served_name(second, 1, None)
    assert len(one) == len(two) == NAME_MAX
    assert one != two  # the hash of the whole claim tells them apart
    assert served_name(first, 1, "alice").startswith("alice~aaaa")
    clash = served_name(first, 123456, None, taken=[one])
    assert len(clash) <= NAME_MAX
    assert clash.endswith("-123456")


@given(st.text(max_size=300), st.sampled_from([None, "alice", "u1000"]),
       st.integers(1, 4_194_304))  # fmt: skip
def test_any_claim_gives_a_safe_bounded_name_with_its_owner(
    claimed: str, owner: str | None, pid: int
) -> None:
    name = served_name(claimed, pid, owner)
    if owner is None:
        assert SAFE.match(name)
        assert OWNER_MARK not in name
        assert len(name) <= NAME_MAX
    else:
        head, mark, rest = name.partition(OWNER_MARK)
        assert (head, mark) == (owner, OWNER_MARK)
        assert SAFE.match(rest)
        assert len(name) <= NAME_MAX
