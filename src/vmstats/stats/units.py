"""Units of statistics: the one place that knows SI/IEC prefixes and how to scale values.

QEMU's HMP prints the *unit* of a stat with a prefix (``ns``, ``KiB``) but the raw value;
our own tools print scaled values (``1.50 ms``).  Both use the prefix tables below.
"""

from __future__ import annotations

from vmstats.stats.model import StatsSchemaValue, StatsUnit, StatsValue

SI_PREFIXES = ("a", "f", "p", "n", "u", "m", "", "K", "M", "G", "T", "P", "E")
IEC_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
SHORT_UNITS = {StatsUnit.SECONDS: "s", StatsUnit.BYTES: "B"}


def si_prefix(exponent: int) -> str | None:
    """The SI prefix for 10**exponent, or None when there is none (not a multiple of 3)."""
    if -18 <= exponent <= 18 and exponent % 3 == 0:
        return SI_PREFIXES[(exponent + 18) // 3]
    return None


def iec_prefix(exponent: int) -> str | None:
    """The IEC prefix for 2**exponent, or None."""
    if 0 <= exponent <= 60 and exponent % 10 == 0:
        return IEC_PREFIXES[exponent // 10]
    return None


def hmp_unit(value: StatsSchemaValue) -> str:
    """The unit text QEMU's ``info stats`` prints after the type, exactly as QEMU does."""
    unit = SHORT_UNITS.get(value.unit) if value.unit is not None else None
    base = value.base or 0
    text = ""
    prefix = si_prefix(value.exponent) if unit and base == 10 else None
    if prefix is None and unit and base == 2:
        prefix = iec_prefix(value.exponent)
    if prefix is not None:
        text = prefix
    elif value.exponent:
        text = f"* {base}^{value.exponent}{' ' if value.unit is not None else ''}"
        unit = None
    if value.unit is not None:
        text += unit if unit else value.unit.value
    return text


def scale(raw: float, schema: StatsSchemaValue | None) -> float:
    """``raw`` in the stat's base unit (seconds, bytes, ...), applying base**exponent.

    A negative exponent divides by the exact power (``1023 / 10**9`` is 1.023e-06, where
    ``1023 * 1e-9`` is 1.0230000000000001e-06).
    """
    if schema is None or not schema.exponent:
        return float(raw)
    base: int = schema.base or 10
    if schema.exponent < 0:
        return float(raw) / float(base**-schema.exponent)
    return float(raw) * float(base**schema.exponent)


def _human_seconds(seconds: float) -> str:
    if seconds == 0:
        return "0 s"
    for factor, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
        if abs(seconds) >= factor:
            return f"{seconds / factor:.3g} {suffix}"
    return f"{seconds / 1e-9:.3g} ns"


def _human_bytes(count: float) -> str:
    for index in range(len(IEC_PREFIXES) - 1, -1, -1):
        factor = 1024.0**index
        if abs(count) >= factor or index == 0:
            return f"{count / factor:.4g} {IEC_PREFIXES[index]}B"
    return f"{count} B"


def human(value: StatsValue, schema: StatsSchemaValue | None) -> str:
    """A scalar or boolean for people: ns as time, bytes as KiB/MiB, counts with separators."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    unit = schema.unit if schema is not None else None
    if unit == StatsUnit.SECONDS:
        return _human_seconds(scale(value, schema))
    if unit == StatsUnit.BYTES:
        return _human_bytes(scale(value, schema))
    if schema is not None and schema.exponent:
        return f"{scale(value, schema):.6g}"
    suffix = " cycles" if unit == StatsUnit.CYCLES else ""
    return f"{value:,}{suffix}"


def bucket_edges(schema: StatsSchemaValue, buckets: int) -> list[tuple[float, float | None]]:
    """``[low, high)`` of each histogram bucket in natural order (lowest first), in the
    stat's base unit (seconds, bytes, ...); ``high`` is None for the last, open bucket.

    The kernel's ABI: linear bucket N (1-based) covers [bs*(N-1), bs*N); log2 bucket 1
    covers [0, 1) and bucket N covers [2**(N-2), 2**(N-1)); the last bucket is open.
    """
    edges: list[tuple[float, float | None]] = []
    for index in range(buckets):
        if schema.type.value == "linear-histogram":
            size = schema.bucket_size or 1
            low, high = size * index, size * (index + 1)
        else:
            low, high = (0, 1) if index == 0 else (2 ** (index - 1), 2**index)
        last = index == buckets - 1
        edges.append((scale(low, schema), None if last else scale(high, schema)))
    return edges


def bucket_ranges(schema: StatsSchemaValue, buckets: int) -> list[str]:
    """Labels of histogram buckets in natural order (lowest first), in the stat's unit."""
    labels = []
    for low, high in bucket_edges(schema, buckets):
        low_text = human_in_unit(low, schema)
        labels.append(
            f">= {low_text}" if high is None else f"{low_text} - {human_in_unit(high, schema)}"
        )
    return labels


def human_in_unit(amount: float, schema: StatsSchemaValue | None) -> str:
    """An amount already in the stat's base unit (seconds, bytes...), for people."""
    unit = schema.unit if schema is not None else None
    if unit == StatsUnit.SECONDS:
        return _human_seconds(amount)
    if unit == StatsUnit.BYTES:
        return _human_bytes(amount)
    return f"{amount:g}"


def human_rate(per_second: float, schema: StatsSchemaValue | None) -> str:
    """A rate of a counter, for people: ``1,234/s``, ``0.52 s/s`` (time per second)."""
    unit = schema.unit if schema is not None else None
    if unit in (StatsUnit.SECONDS, StatsUnit.BYTES) or (schema is not None and schema.exponent):
        return f"{human_in_unit(scale(per_second, schema), schema)}/s"
    if per_second and abs(per_second) < 10:
        return f"{per_second:.2f}/s"
    return f"{per_second:,.0f}/s"
