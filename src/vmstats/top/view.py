"""A compact live table of the busiest counters per vCPU (rich).

The ``top`` tool builds on this; the demo shows it by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from vmstats.top.sample import Sample, rates

DEFAULT_COLUMNS = (
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "insn_emulation",
    "signal_exits",
)


def vcpu_table(
    before: Sample, after: Sample, title: str, columns: Sequence[str] = DEFAULT_COLUMNS
) -> Table:
    """One row per vCPU: each counter's rate per second, and its total below it."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("vCPU (qom-path)")
    for name in columns:
        table.add_column(f"{name}/s", justify="right")
    per_second = rates(before, after)
    for key, stats in after.values.items():
        if key[1] != "vcpu":
            continue
        row = per_second.get(key, {})
        cells = [
            f"{row.get(name, 0):,.0f}\n[dim]{stats[name]:,}[/dim]" if name in stats else "-"
            for name in columns
        ]
        table.add_row(key[2], *cells)
    return table
