"""``collections_held``: no automatic collection inside, and the collector as it was
after (a burst inside another burst must not turn collections back on early)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from vmstats.collect import collections_held


@pytest.fixture
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("collector_restored")
def test_no_collection_inside_and_enabled_again_after() -> None:
    gc.enable()
    with collections_held():
        assert not gc.isenabled()
        with collections_held():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer burst still holds them
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_restored")
def test_enabled_again_after_an_error() -> None:
    gc.enable()
    with pytest.raises(OSError, match="vanished"), collections_held():
        raise OSError("a vanished VM")
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_restored")
def test_a_collector_turned_off_stays_off() -> None:
    gc.disable()
    with collections_held():
        pass
    assert not gc.isenabled()
