"""Human output of stats replies (rich): natural order, units applied, histograms readable."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from vmstats.stats.model import StatsResult, StatsSchema, StatsSchemaValue, StatsTarget
from vmstats.stats.order import natural_results, natural_schema_values
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


def print_results(
    console: Console, target: StatsTarget, results: Sequence[StatsResult], schemas: SchemaIndex
) -> None:
    if not results:
        console.print("no statistics matched")
        return
    for result in natural_results(results):
        title = f"{result.provider.value}: {result.qom_path or target.value}"
        table = Table(title=title, title_justify="left")
        table.add_column("stat")
        table.add_column("type")
        table.add_column("value", justify="right")
        for name, value in result.stats:
            schema = schemas.get((result.provider.value, target.value, name))
            text = _histogram(value, schema) if isinstance(value, list) else human(value, schema)
            table.add_row(name, schema.type.value if schema else "?", text)
        console.print(table)


def print_schemas(console: Console, schemas: Sequence[StatsSchema]) -> None:
    for schema in reversed(schemas):
        table = Table(
            title=f"{schema.provider.value} / {schema.target.value}", title_justify="left"
        )
        for column in ("name", "type", "unit", "base^exponent", "bucket size"):
            table.add_column(column)
        for v in natural_schema_values(schema):
            scale = f"{v.base}^{v.exponent}" if v.exponent else ""
            table.add_row(
                v.name,
                v.type.value,
                v.unit.value if v.unit else "",
                scale,
                "" if v.bucket_size is None else str(v.bucket_size),
            )
        console.print(table)
