"""The full-screen view of ``vmstats top`` (textual): every stat of every VM, live.

Keys follow kvm_stat where they make sense: ``b`` each VM, or (with several) their
totals, ``c`` clear the filter, ``f`` filter by a regular expression (matched at the start of
names), ``g``/``p`` choose a VM, ``h`` help, ``o`` sort by rate, total or name, ``q``
quit, ``r`` reset totals, ``s`` set the interval, ``x`` one VM's vCPUs side by side;
plus space to pause and Enter on a histogram for its buckets.  Arrows and PageUp/Down
scroll.  The view draws rows made by :mod:`.frame`; it computes nothing itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from vmstats.stats.model import StatsSchemaValue, StatsType
from vmstats.top.drive import Driver
from vmstats.top.frame import SORT_KEYS, StatFilter, StatRow, histogram_bars, sort_rows
from vmstats.top.table import StatsTable
from vmstats.top.watch import VmState

_NO_SCHEMA = StatsSchemaValue("", StatsType.INSTANT)
#: What a view shows: column labels, and rows as (key, cells).
Table = tuple[list[str], list[tuple[str, list[str | Text]]]]  # for a "gone" line: no stat

HELP = """\
 b  each VM, or (with several) their totals    o  sort by rate, total, name
 c  clear the filter                            q  quit (also Ctrl-C)
 f  filter stats by regular expression          r  reset totals (count from now)
 g  choose a VM (empty: all)                    s  set the refresh interval
 h  this help                                   x  the chosen VM's vCPUs side by side
 p  same as g                                   space  pause / resume
 Enter on a histogram: its buckets      arrows, PageUp/PageDown: scroll
"""


class Prompt(ModalScreen[str | None]):
    """One line of input (a filter, a VM name, an interval); Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question = question
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Static(self.question)
            yield Input(value=self.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextScreen(ModalScreen[None]):
    """Text to read (help, a histogram's buckets); any key closes it."""

    def __init__(self, text: str | Text) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.text, id="text")

    def on_key(self) -> None:
        self.dismiss(None)


class TopApp(App[int]):
    """Watch VMs; every refresh redraws the table from the watch's rows."""

    CSS = """
    #status { height: 1; background: $boost; }
    #prompt { width: 60; height: auto; border: round $accent; padding: 0 1; }
    Prompt, TextScreen { align: center middle; }
    #text { width: auto; height: auto; border: round $accent; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("space", "pause", "pause"),
        Binding("r", "reset", "reset"),
        Binding("o", "sort", "sort"),
        Binding("f", "filter", "filter"),
        Binding("c", "clear_filter", "clear", show=False),
        Binding("g", "choose_vm", "VM"),
        Binding("p", "choose_vm", "VM", show=False),
        Binding("x", "vcpus", "vCPUs"),
        Binding("b", "by_vm", "by VM", show=False),
        Binding("s", "interval", "interval", show=False),
        Binding("h", "help", "help"),
        Binding("question_mark", "help", "help", show=False),
        Binding("enter", "histogram", "buckets", show=False),
    ]

    def __init__(
        self,
        driver: Driver,
        title: str = "vmstats top",
        stat_filter: StatFilter | None = None,
        vcpus: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.driver = driver
        self.title_text = title
        self.stat_filter = stat_filter or StatFilter()
        self.vcpus = vcpus
        self.sort_by = SORT_KEYS[0]
        self.paused = False
        self.by_vm = False  # several VMs: their totals; b shows each VM (kvm_stat's b)
        self.per_vcpu = False
        self.chosen_vm: str | None = None
        self.ended = False
        self.shown: list[StatRow] = []
        self._timer_delay = driver.interval or 1.0
        self._status_text = ""

    # -- layout and timing ------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield StatsTable(id="stats")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#stats", StatsTable).focus()  # the arrow and page keys move its cursor
        await self.tick()

    async def tick(self) -> None:
        """One step of the driver (unless paused), a redraw, and the next tick."""
        delay: float | None = self._timer_delay
        if not self.paused and not self.ended:
            delay = await self.driver.step()
            if delay is None:
                self.ended = True
            self.redraw()  # paused or ended: the screen keeps what it shows
        if delay is not None and not self.ended:
            self._timer_delay = delay if delay > 0 else self.driver.interval or 1.0
        self.set_timer(self._timer_delay if delay is None or delay > 0 else 0.01, self.tick)

    # -- drawing --------------------------------------------------------------------------

    def redraw(self) -> None:
        try:
            table = self.query_one("#stats", StatsTable)
        except NoMatches:  # a last tick while the app closes
            return
        selected = self._key(table.cursor_row)  # the cursor follows its stat, not its place
        if self.per_vcpu:  # its own rows, one vCPU at a time
            labels, rows = self._vcpu_rows()
        else:
            labels, rows = self._stat_rows(*self.driver.watch.rows(self.stat_filter, self.vcpus))
        table.set_rows(labels, [cells for _, cells in rows])
        if selected is not None:
            keys = [self._key(i) for i in range(len(self.shown))]
            if selected in keys and keys.index(selected) != table.cursor_row:
                table.move_cursor(keys.index(selected))
        self._status()

    def _status(self) -> None:
        bits = [
            self.title_text,
            f"VMs: {', '.join(self.driver.watch.vms)}",
            f"interval {self._timer_delay:.3g} s",  # a replay's gaps: 1.01, not 1.00531
            f"sort: {self.sort_by}",
        ]
        if self.stat_filter.pattern:
            bits.append(f"filter: {self.stat_filter.pattern}")
        if self.chosen_vm:
            bits.append(f"VM: {self.chosen_vm}")
        if self.paused:
            bits.append("PAUSED")
        if self.ended:
            bits.append("end of recording")
        status = " | ".join(bits)
        if status != self._status_text:  # an update lays the screen out again
            self._status_text = status
            self.query_one("#status", Static).update(status)

    def _vms(self) -> list[VmState]:
        vms = self.driver.watch.vms
        if self.chosen_vm is not None and self.chosen_vm in vms:
            return [vms[self.chosen_vm]]
        return list(vms.values())

    def _stat_rows(self, per_vm: dict[str, list[StatRow]], total: list[StatRow]) -> Table:
        several = len(self.driver.watch.vms) > 1 and self.chosen_vm is None
        labels = ["stat", "per second", "total", "value"]
        if several:
            labels.insert(0, "VM")
        self.shown = []
        rows: list[tuple[str, list[str | Text]]] = []
        blocks: list[tuple[str, list[StatRow]]] = []
        gone = [s for s in self._vms() if s.gone is not None]
        shown = self._vms() if self.by_vm or not several else gone  # gone VMs always show
        blocks += [(state.name, per_vm.get(state.name, [])) for state in shown]
        if several and total:
            blocks.append(("total", total))
        for name, block in blocks:
            state = self.driver.watch.vms.get(name)
            lead: list[str | Text] = [name] if several else []
            if state is not None and state.gone is not None:
                rows.append((f"{name}\0gone", [*lead, Text("gone: " + state.gone, style="bold red"),
                                                "", "", ""]))  # fmt: skip
                self.shown.append(StatRow(name, "", "", _NO_SCHEMA, 0))
                continue
            for row in sort_rows(block, self.sort_by):
                label = row.key if row.target == "vm" else row.name
                cells: list[str | Text] = [*lead, label, row.rate_text(), row.total_text(),
                                           row.value_text()]  # fmt: skip
                rows.append((f"{name}\0{row.key}", cells))
                self.shown.append(row)
        return labels, rows

    def _vcpu_rows(self) -> Table:
        states = [s for s in self._vms() if s.gone is None and s.current is not None]
        self.shown = []
        if not states:
            return ["vCPUs"], [("none", ["no VM to show"])]
        state = states[0]
        numbers = [i for i in range(len(state.cpus)) if self.vcpus is None or i in self.vcpus]
        labels = [f"{state.name}: stat", *(f"vCPU {i}" for i in numbers)]
        columns = [state.rows([i]) for i in numbers]
        rows: list[tuple[str, list[str | Text]]] = []
        if not columns:
            return labels, rows
        keep = {r.name for r in sort_rows(state.rows(self.vcpus), self.sort_by)
                if r.target == "vcpu" and self.stat_filter(r.name)}  # fmt: skip
        for row in (r for r in sort_rows(columns[0], self.sort_by) if r.name in keep):
            cells: list[str | Text] = [row.name]
            for found in columns:
                match = next((r for r in found if r.name == row.name and r.target == "vcpu"), None)
                cells.append("" if match is None else match.cell_text())
            rows.append((row.name, cells))
            self.shown.append(row)
        return labels, rows

    # -- actions ----------------------------------------------------------------------------

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._status()

    def action_reset(self) -> None:
        self.driver.watch.reset()
        self.redraw()

    def action_sort(self) -> None:
        self.sort_by = SORT_KEYS[(SORT_KEYS.index(self.sort_by) + 1) % len(SORT_KEYS)]
        self.redraw()

    def action_clear_filter(self) -> None:
        self.stat_filter = StatFilter()
        self.redraw()

    def action_filter(self) -> None:
        def done(pattern: str | None) -> None:
            if pattern is None:
                return
            try:
                self.stat_filter = StatFilter(pattern)
            except re.error as exc:
                self.notify(f"not a regular expression: {exc}", severity="error")
                return
            self.redraw()

        self.push_screen(Prompt("Filter stats (regular expression, matched at the start):",
                                self.stat_filter.pattern), done)  # fmt: skip

    def action_choose_vm(self) -> None:
        def done(name: str | None) -> None:
            if name is None:
                return
            if name and name not in self.driver.watch.vms:
                self.notify(f"no VM named {name!r}", severity="error")
                return
            self.chosen_vm = name or None
            self.redraw()

        names = ", ".join(self.driver.watch.vms)
        self.push_screen(Prompt(f"Show one VM ({names}; empty: all):", self.chosen_vm or ""),
                         done)  # fmt: skip

    def action_interval(self) -> None:
        def done(text: str | None) -> None:
            if text is None:
                return
            try:
                seconds = float(text)
                if not math.isfinite(seconds) or seconds <= 0:
                    raise ValueError(text)
            except ValueError:
                self.notify(f"not an interval in seconds: {text!r}", severity="error")
                return
            self.driver.interval = seconds
            self._timer_delay = seconds
            self._status()

        self.push_screen(Prompt("Refresh interval in seconds:", f"{self._timer_delay:g}"), done)

    def action_vcpus(self) -> None:
        self.per_vcpu = not self.per_vcpu
        self.redraw()

    def action_by_vm(self) -> None:
        self.by_vm = not self.by_vm
        self.redraw()

    def action_help(self) -> None:
        self.push_screen(TextScreen(HELP))

    def on_stats_table_row_selected(self, event: StatsTable.RowSelected) -> None:
        """Enter on a row (the table takes the key): a histogram's buckets."""
        self.action_histogram()

    def _key(self, index: int) -> tuple[str, str, str] | None:
        """What the row at ``index`` shows: (VM, target, stat)."""
        if not 0 <= index < len(self.shown):
            return None
        row = self.shown[index]
        return (row.vm, row.target, row.name)

    def action_histogram(self) -> None:
        table = self.query_one("#stats", StatsTable)
        if not 0 <= table.cursor_row < len(self.shown):
            return
        row = self.shown[table.cursor_row]
        if row.buckets is None:
            self.notify(f"{row.name} is not a histogram: Enter shows a histogram's buckets",
                        timeout=3)  # fmt: skip
            return
        text = Text(f"{row.vm}: {row.name}, last interval ({row.value_text()})\n")
        bars = histogram_bars(row)
        for label, count, bar in bars:
            text.append(f"{label:>22} {count:>8,} ")
            text.append(bar + "\n", style="green")
        if not bars:
            text.append("no samples in the last interval\n")
        self.push_screen(TextScreen(text))
