"""Batch output of ``vmstats top``, as kvm_stat's modes: once, log, CSV, and JSON Lines.

Each writer gets the rows of one refresh (:meth:`Watch.rows`) and writes to a text
stream; nothing is cut to a terminal's width.  Values per column:

- counters: the rate per second over the interval (``--once`` and JSON also give the
  total since the start);
- instant and peak: the value; booleans: how many vCPUs are true;
- histograms: samples per second, and p50/p90/p99 in the stat's base unit (seconds).

Raw numbers in CSV and JSON are in the stat's own unit (``halt_wait_ns`` in ns); the
column names are ``TARGET.NAME`` (``vcpu.exits``, ``vm.pages_4k``).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from vmstats.reader.sample import same_objects
from vmstats.top.frame import QUANTILES, StatRow

LOG_BANNER_EVERY = 20


def row_columns(row: StatRow) -> list[tuple[str, float | int | None]]:
    """The machine-readable columns of one row: (column name, value)."""
    key = row.key
    if row.buckets is not None:
        out: list[tuple[str, float | int | None]] = [(key, _round(row.rate))]
        pcts = row.percentiles or (None,) * len(QUANTILES)
        out += [(f"{key}.p{round(q * 100)}", p) for q, p in zip(QUANTILES, pcts, strict=True)]
        return out
    if row.true_count is not None:
        return [(key, row.true_count)]
    if row.value is not None:
        return [(key, row.value)]
    return [(key, _round(row.rate))]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _text(value: float | int | None) -> str:
    """A column's text: whole numbers as integers, others in plain decimals (``%g`` wrote
    3.98659e+09, which log readers and spreadsheets take for another number)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


class Output:
    """A text stream that may be a file reopened on SIGHUP (for logrotate)."""

    def __init__(self, stream: IO[str] | None = None, path: Path | None = None) -> None:
        self.path = path
        self._reopen = False
        self.stream: IO[str] = stream if stream is not None else self._open()
        self._fresh = self._is_empty()
        if path is not None:
            signal.signal(signal.SIGHUP, self._on_hup)

    def _open(self) -> IO[str]:
        assert self.path is not None
        return self.path.open("a", encoding="utf-8")

    def _is_empty(self) -> bool:
        if self.path is None:
            return True
        try:
            return self.path.stat().st_size == 0
        except OSError:
            return True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reopen = True

    def _reopen_if_asked(self) -> None:
        if self._reopen and self.path is not None:
            self._reopen = False
            self.stream.close()
            self.stream = self._open()
            self._fresh = self._is_empty()

    @property
    def fresh(self) -> bool:
        """Is nothing written to the current file yet (after a reopen, too)?"""
        self._reopen_if_asked()
        return self._fresh

    def write(self, text: str) -> None:
        self._reopen_if_asked()
        self.stream.write(text)
        self.stream.flush()
        self._fresh = False


Writer = Callable[[float, dict[str, list[StatRow]], list[StatRow], dict[str, str | None]], None]


class OnceWriter:
    """A table per VM: stat, total since start, rate, value (``-1``)."""

    def __init__(self, out: Output, skip_zero: bool) -> None:
        self.out = out
        self.skip_zero = skip_zero

    def __call__(self, taken: float, per_vm: dict[str, list[StatRow]], total: list[StatRow],
                 gone: dict[str, str | None]) -> None:  # fmt: skip
        blocks = [*per_vm.items(), *([("total", total)] if total else [])]
        lines = []
        for name, rows in blocks:
            if gone.get(name):
                lines.append(f"{name}: gone ({gone[name]})")
                continue
            shown = [r for r in rows if not (self.skip_zero and r.is_zero)]
            lines.append(f"{name}:")
            width = max((len(r.key) for r in shown), default=10)
            lines.append(f"  {'stat':<{width}}  {'total':>16}  {'per second':>14}  value")
            for row in shown:
                lines.append(f"  {row.key:<{width}}  {row.total_text():>16}  "
                             f"{row.rate_text():>14}  {row.value_text()}".rstrip())  # fmt: skip
        self.out.write("\n".join(lines) + "\n")


class TableWriter:
    """kvm_stat's log mode (``-l``): a banner of column names every 20 lines, then one
    line per VM per refresh; and CSV (``-c``): the header once per file."""

    def __init__(self, out: Output, skip_zero: bool, csv: bool) -> None:
        self.out = out
        self.skip_zero = skip_zero
        self.csv = csv
        self.columns: list[str] | None = None
        self._lines = 0

    def __call__(self, taken: float, per_vm: dict[str, list[StatRow]], total: list[StatRow],
                 gone: dict[str, str | None]) -> None:  # fmt: skip
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(taken))
        for name, rows in per_vm.items():
            if not rows:
                continue
            values = dict(column for row in rows for column in row_columns(row))
            if self.columns is None:
                self.columns = list(values)
            if self.skip_zero and not any(values.get(c) for c in self.columns):
                continue
            cells = [stamp, name, *(_text(values.get(c)) for c in self.columns)]
            self._emit(cells)

    def _emit(self, cells: Sequence[str]) -> None:
        assert self.columns is not None
        header = ["time", "vm", *self.columns]
        if self.csv:
            text = ""
            if self.out.fresh:
                text = ",".join(header) + "\n"
            self.out.write(text + ",".join(_csv(c) for c in cells) + "\n")
            return
        widths = [max(len(h), 12) for h in header]
        text = ""
        if self._lines % LOG_BANNER_EVERY == 0:
            text = " ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)) + "\n"
        self._lines += 1
        self.out.write(
            text + " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + "\n"
        )


def _csv(cell: str) -> str:
    return f'"{cell.replace(chr(34), chr(34) * 2)}"' if any(c in cell for c in ',"\n') else cell


class JsonWriter:
    """One JSON object per refresh (``--json``), its shape in docs/top.md.

    Each stat's entry is encoded once per row: rows of stats that did not move are the
    same objects from one refresh to the next (:func:`vmstats.top.frame.vm_rows`), so
    their text is kept, and a refresh encodes only what moved."""

    def __init__(self, out: Output, skip_zero: bool) -> None:
        self.out = out
        self.skip_zero = skip_zero
        self._encoded: dict[tuple[str, str, str], tuple[StatRow, str]] = {}
        self._objects: dict[str, tuple[list[StatRow], str]] = {}  # per VM: its rows, its text
        self._named: dict[str, tuple[str, str]] = {}  # per VM: its text, and with its name
        self._members: tuple[list[str], str] = ([], "")  # the last VMs' members, joined

    @staticmethod
    def entry(row: StatRow) -> dict[str, Any]:
        """One stat's entry: its type and the values it has."""
        entry: dict[str, Any] = {"type": row.schema.type.value}
        for field_name in ("rate", "total", "value", "true_count"):
            value = getattr(row, field_name)
            if value is not None:
                entry[field_name] = _round(value) if isinstance(value, float) else value
        if row.true_count is not None:
            entry["objects"] = row.objects
        if row.buckets is not None:
            entry["buckets"] = list(row.buckets)
            entry.update({f"p{round(q * 100)}": p for q, p in
                          zip(QUANTILES, row.percentiles or (), strict=False)})  # fmt: skip
        return entry

    def _encode(self, row: StatRow) -> str:
        """``"KEY":ENTRY``, as ``json.dumps`` writes it in an object."""
        slot = (row.vm, row.target, row.name)
        kept = self._encoded.get(slot)
        if kept is not None and kept[0] is row:
            return kept[1]
        text = _dumps(row.key) + ":" + _dumps(self.entry(row))
        self._encoded[slot] = (row, text)
        return text

    def _member(self, name: str, rows: Sequence[StatRow], gone: str | None) -> str:
        """A VM's ``"NAME":{...}``; the very string of last time while its rows are the
        same objects (its name encoded once)."""
        stats = _dumps({"gone": gone}) if gone else self._stats(rows, name)
        kept = self._named.get(name)
        if kept is None or kept[0] is not stats:
            kept = self._named[name] = (stats, _dumps(name) + ":" + stats)
        return kept[1]

    def _stats(self, rows: Sequence[StatRow], slot: str = "") -> str:
        """The rows' object; a VM's (``slot``) kept while its rows are the same objects."""
        kept = self._objects.get(slot) if slot else None
        if kept is not None and same_objects(kept[0], rows):
            return kept[1]
        members = {row.key: self._encode(row) for row in rows
                   if not (self.skip_zero and row.is_zero)}  # fmt: skip
        text = "{" + ",".join(members.values()) + "}"
        if slot:
            self._objects[slot] = (list(rows), text)
        return text

    def __call__(self, taken: float, per_vm: dict[str, list[StatRow]], total: list[StatRow],
                 gone: dict[str, str | None]) -> None:  # fmt: skip
        members = [self._member(name, rows, gone.get(name)) for name, rows in per_vm.items()]
        if not same_objects(self._members[0], members):  # else no VM moved: the same text
            self._members = (members, ",".join(members))
        text = '{"time":' + _dumps(round(taken, 3)) + ',"vms":{' + self._members[1] + "}"
        if total:
            text += ',"total":' + self._stats(total)
        self.out.write(text + "}\n")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
