"""QMP replies (parsed JSON) to the stats model, for clients.

Cheaper than the QAPI input visitor (a ``top`` refresh decodes every stat of every vCPU
of every VM), and as strict about what the tools rely on: the types of names and values,
the enums.  Anything else is a :class:`ClientError` saying what is malformed.
"""

from __future__ import annotations

from typing import Any

from vmstats.errors import ClientError
from vmstats.stats.model import (
    StatsProvider,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)


def _provider(text: Any) -> StatsProvider:
    try:
        return StatsProvider(text)
    except ValueError:
        raise ClientError(f"malformed reply: unknown provider {text!r}") from None


def results_from_wire(reply: Any) -> list[StatsResult]:
    """``query-stats``'s return value as results; :class:`ClientError` if malformed.

    Cheaper than the QAPI visitor (a top refresh decodes every stat of every vCPU), and
    as strict about what the views rely on: the types of names and values.
    """
    if not isinstance(reply, list):
        raise ClientError("malformed reply: query-stats did not return a list")
    out = []
    for item in reply:
        try:
            stats = [(s["name"], s["value"]) for s in item["stats"]]
            path = item.get("qom-path")
            provider = _provider(item["provider"])
        except (TypeError, KeyError) as exc:
            raise ClientError(f"malformed reply: a result lacks {exc}") from None
        for name, value in stats:
            if not isinstance(name, str) or not _is_value(value):
                raise ClientError(f"malformed reply: stat {name!r} has value {value!r}")
        out.append(StatsResult(provider, stats, path if isinstance(path, str) else None))
    return out


def _is_value(value: Any) -> bool:
    if isinstance(value, bool | int):
        return True
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def schemas_from_wire(reply: Any) -> list[StatsSchema]:
    """``query-stats-schemas``'s return value; :class:`ClientError` if malformed."""
    if not isinstance(reply, list):
        raise ClientError("malformed reply: query-stats-schemas did not return a list")
    out = []
    try:
        for item in reply:
            values = [
                StatsSchemaValue(
                    v["name"],
                    StatsType(v["type"]),
                    StatsUnit(v["unit"]) if "unit" in v else None,
                    v.get("base"),
                    v.get("exponent", 0),
                    v.get("bucket-size"),
                )
                for v in item["stats"]
            ]
            out.append(
                StatsSchema(_provider(item["provider"]), StatsTarget(item["target"]), values)
            )
    except (TypeError, KeyError, ValueError) as exc:
        raise ClientError(f"malformed reply: a schema entry is broken ({exc})") from None
    return out
