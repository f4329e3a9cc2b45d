"""Human output of stats replies: natural order, units applied, histograms readable.

Plain aligned text, not a terminal widget: it is never cut to a terminal's width (a
pipe into ``grep`` sees full names), and 300 vCPUs print in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmstats.stats.model import StatsResult, StatsSchema, StatsSchemaValue, StatsTarget
from vmstats.stats.order import natural_results, natural_schema_values, natural_schemas
from vmstats.stats.units import bucket_ranges, human

SchemaIndex = dict[tuple[str, str, str], StatsSchemaValue]


def index_schemas(schemas: Sequence[StatsSchema]) -> SchemaIndex:
    return {(s.provider.value, s.target.value, v.name): v for s in schemas for v in s.stats}


def _histogram(value: list[int], schema: StatsSchemaValue | None) -> str:
    total = sum(value)
    if schema is None or not total:
        return f"{total} samples"
    parts = [
        f"{label}: {count}"
        for label, count in zip(bucket_ranges(schema, len(value)), value, strict=True)
        if count
    ]
    return f"{total} samples; " + ", ".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns aligned to their widest cell; columns in ``right`` aligned right."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for cells in (header, *rows):
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]  # fmt: skip
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def results_text(target: StatsTarget, results: Sequence[StatsResult], schemas: SchemaIndex,
                 vcpus: Mapping[str, int] | None = None) -> str:  # fmt: skip
    """``query-stats`` results for people: one block per object, vCPU 0 first, each vCPU
    by its number (what ``--vcpus`` takes) and its QOM path (``vcpus`` maps them)."""
    if not results:
        return "no statistics matched\n"
    blocks = []
    for result in natural_results(results):
        rows = []
        for name, value in result.stats:
            schema = schemas.get((result.provider.value, target.value, name))
            text = _histogram(value, schema) if isinstance(value, list) else human(value, schema)
            rows.append((name, schema.type.value if schema else "?", text))
        where = result.qom_path or target.value
        number = (vcpus or {}).get(where)
        title = (
            f"{result.provider.value}: {where if number is None else f'vCPU {number} ({where})'}\n"
        )
        blocks.append(title + table(("stat", "type", "value"), rows, right=(2,)))
    return "\n".join(blocks)


def schemas_text(schemas: Sequence[StatsSchema]) -> str:
    """``query-stats-schemas`` for people: one block per provider and target."""
    blocks = []
    for schema in natural_schemas(schemas):
        rows = [
            (
                v.name,
                v.type.value,
                v.unit.value if v.unit else "",
                f"{v.base}^{v.exponent}" if v.exponent else "",
                "" if v.bucket_size is None else str(v.bucket_size),
            )
            for v in natural_schema_values(schema)
        ]
        header = ("name", "type", "unit", "base^exponent", "bucket size")
        blocks.append(f"{schema.provider.value} / {schema.target.value}\n" + table(header, rows))
    return "\n".join(blocks)
