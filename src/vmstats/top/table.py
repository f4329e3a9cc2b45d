"""The table of ``vmstats top``: text cells drawn line by line with textual's Line API.

textual's DataTable turns every changed cell into rich segments and re-measures its rows;
top changes most cells every refresh, and that cost about 4 % of a core for 8 VMs (more
than everything else the view does).  Here each row is laid out once per refresh as
plain text in fixed-width columns, and only the lines on screen become segments.  The
header stays on the first line while the rows scroll under it; the cursor is a row,
moved with the arrow and page keys; Enter posts :class:`StatsTable.RowSelected`.
"""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = str | Text
GAP = "  "
HEADER = Style(bold=True, reverse=True)
CURSOR = Style(reverse=True)
STRIPE = Style(bgcolor="grey11")


class StatsTable(ScrollView, can_focus=True):
    """Rows of cells under a header; a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", show=False),
        Binding("down", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "cursor(-1000000)", show=False),
        Binding("end", "cursor(1000000)", show=False),
        Binding("enter", "select", show=False),
    ]

    class RowSelected(Message):
        """Enter on a row."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.labels: list[str] = []
        self.rows: list[list[Cell]] = []
        self.cursor_row = 0
        self._lines: list[list[tuple[str, Style | None]]] = []
        self._header = ""

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def get_row_at(self, index: int) -> list[Cell]:
        return self.rows[index]

    def set_rows(self, labels: list[str], rows: list[list[Cell]]) -> None:
        """Show these rows (a refresh); the cursor stays on its row number."""
        texts = [[c.plain if isinstance(c, Text) else c for c in row] for row in rows]
        widths = [len(label) for label in labels]
        for plain in texts:
            for index, text in enumerate(plain[: len(widths)]):
                widths[index] = max(widths[index], len(text))
        self.labels, self.rows = labels, rows
        self._header = GAP.join(label.ljust(w) for label, w in zip(labels, widths, strict=True))
        self._lines = []
        for row, cells in zip(texts, rows, strict=True):
            line: list[tuple[str, Style | None]] = []
            for index, (text, cell) in enumerate(zip(row, cells, strict=False)):
                style = cell.style if isinstance(cell, Text) else None
                pad = widths[index] if index < len(widths) else len(text)
                line.append(((GAP if index else "") + text.ljust(pad),
                             Style.parse(style) if isinstance(style, str) and style else
                             (style or None)))  # fmt: skip
            self._lines.append(line)
        self.cursor_row = min(self.cursor_row, max(len(rows) - 1, 0))
        self.virtual_size = Size(len(self._header), len(rows) + 1)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            segments = [Segment(self._header, HEADER)]
        else:
            index = y - 1 + scroll_y
            if index >= len(self._lines):
                return Strip.blank(width)
            base = CURSOR if index == self.cursor_row else None
            if base is None and index % 2:
                base = STRIPE
            segments = [Segment(text, (base + style) if base and style else (style or base))
                        for text, style in self._lines[index]]  # fmt: skip
        line_style = HEADER if y == 0 else None
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, line_style)

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self.rows) - 1))
        top = self.scroll_offset.y
        shown = max(self.size.height - 1, 1)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + shown:
            self.scroll_to(y=self.cursor_row - shown + 1, animate=False)
        self.refresh()

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor_row + direction * max(self.size.height - 2, 1))

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.RowSelected(self.cursor_row))
