"""The full-screen view, headless (textual's pilot), against a real demo VM over QMP."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.reader.reading import QmpReader
from vmstats.testing.hostile import DemoServer
from vmstats.top.app import TextScreen, TopApp
from vmstats.top.drive import LiveDriver
from vmstats.top.table import StatsTable
from vmstats.top.watch import Watch

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.fixture(scope="module")
def busy() -> Iterator[DemoServer]:
    with DemoServer(vcpus=2, rate=200) as server:
        yield server


@pytest.fixture(scope="module")
def still() -> Iterator[DemoServer]:
    """A demo whose counters stand still: one round per 1,000 s."""
    with DemoServer(vcpus=2, rate=0.001) as server:
        yield server


def cells(app: TopApp) -> list[list[str]]:
    table = app.query_one("#stats", StatsTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def by_stat(app: TopApp) -> dict[str, list[str]]:
    """Rows by stat name, as [stat, per second, total, value] (one VM: no VM column)."""
    return {row[0]: row for row in cells(app)}


def run(app: TopApp, script: object) -> None:
    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await script(pilot)  # type: ignore[operator]

    asyncio.run(main())


def test_rates_move_and_keys_do_what_they_say(busy: DemoServer) -> None:
    app = TopApp(LiveDriver(Watch([QmpReader(str(busy.path))]), 0.3), "test")

    async def script(pilot: object) -> None:
        await pilot.pause(1.0)  # type: ignore[attr-defined]
        rate = by_stat(app)["halt_exits"][1]
        assert re.fullmatch(r"[0-9,.]+/s", rate), rate
        assert rate not in ("0/s", "0.00/s"), rate
        rates = [r.rate or 0 for r in app.shown]
        assert rates == sorted(rates, reverse=True)  # busiest first
        await pilot.press("o")  # type: ignore[attr-defined]
        await pilot.press("o")  # type: ignore[attr-defined]
        names = [row[0] for row in cells(app) if row[0].startswith(("halt", "exits"))]
        assert app.sort_by == "name"
        assert names == sorted(names)
        await pilot.press("f", *"halt_", "enter")  # type: ignore[attr-defined]
        await pilot.pause(0.1)  # type: ignore[attr-defined]
        assert cells(app)
        assert all(row[0].startswith("halt_") for row in cells(app))
        await pilot.press("c")  # type: ignore[attr-defined]
        assert any(row[0] == "exits" for row in cells(app))
        await pilot.press("space")  # type: ignore[attr-defined]
        frozen = cells(app)
        await pilot.pause(0.8)  # type: ignore[attr-defined]
        assert cells(app) == frozen
        assert app.paused
        await pilot.press("r")  # type: ignore[attr-defined]  # while paused: no refresh races
        assert by_stat(app)["halt_exits"][2] == "0"  # totals count from now
        await pilot.press("space")  # type: ignore[attr-defined]
        await pilot.press("x")  # type: ignore[attr-defined]
        table = app.query_one("#stats", StatsTable)
        assert table.labels[1:] == ["vCPU 0", "vCPU 1"]
        await pilot.press("x", "h")  # type: ignore[attr-defined]
        assert isinstance(app.screen, TextScreen)
        await pilot.press("escape")  # type: ignore[attr-defined]
        await pilot.press("q")  # type: ignore[attr-defined]

    run(app, script)


def test_the_drill_down_shows_what_query_shows(still: DemoServer) -> None:
    app = TopApp(LiveDriver(Watch([QmpReader(str(still.path))]), 0.3), "test")

    async def script(pilot: object) -> None:
        await pilot.pause(0.8)  # type: ignore[attr-defined]
        await pilot.press("x")  # type: ignore[attr-defined]
        rows = {row[0]: row for row in cells(app)}
        for vcpu in (0, 1):
            out = subprocess.run([sys.executable, "-m", "vmstats", "query", str(still.path),
                                  "--target", "vcpu", "--vcpus", str(vcpu), "--names",
                                  "exits,halt_exits,blocking,insn_emulation"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            for line in out.splitlines()[2:]:
                name, _, value = line.split(None, 2)
                shown = rows[name][1 + vcpu]
                assert shown == value or shown.startswith(value + " ("), (name, shown, value)
        await pilot.press("q")  # type: ignore[attr-defined]

    run(app, script)


def test_histogram_buckets_open_on_enter(busy: DemoServer) -> None:
    app = TopApp(LiveDriver(Watch([QmpReader(str(busy.path))]), 0.3), "test")

    async def script(pilot: object) -> None:
        await pilot.pause(0.8)  # type: ignore[attr-defined]
        await pilot.press("o", "o")  # type: ignore[attr-defined]  # by name: a stable order
        row = next(i for i, r in enumerate(app.shown) if r.buckets is not None)
        app.query_one("#stats", StatsTable).move_cursor(row=row)
        await pilot.press("enter")  # type: ignore[attr-defined]
        assert isinstance(app.screen, TextScreen)
        assert "last interval" in str(app.screen.text)
        await pilot.press("escape", "q")  # type: ignore[attr-defined]

    run(app, script)


def test_the_cursor_follows_its_stat_when_rows_move(busy: DemoServer) -> None:
    """Rows re-sort at every refresh (busiest first) and on ``o``: the selected row stays
    on the stat the user chose, not on its place (Enter then opens what was chosen)."""
    app = TopApp(LiveDriver(Watch([QmpReader(str(busy.path))]), 0.3), "test")

    async def script(pilot: object) -> None:
        await pilot.pause(0.8)  # type: ignore[attr-defined]
        table = app.query_one("#stats", StatsTable)
        chosen = next(i for i, r in enumerate(app.shown) if r.name == "halt_wait_hist")
        table.move_cursor(chosen)
        for _ in range(2):  # by total, then by name: the rows move
            await pilot.press("o")  # type: ignore[attr-defined]
            assert app.shown[table.cursor_row].name == "halt_wait_hist"
        await pilot.pause(0.7)  # type: ignore[attr-defined]  # refreshes
        assert app.shown[table.cursor_row].name == "halt_wait_hist"
        await pilot.press("enter")  # type: ignore[attr-defined]
        assert isinstance(app.screen, TextScreen)
        await pilot.press("escape", "q")  # type: ignore[attr-defined]

    run(app, script)
