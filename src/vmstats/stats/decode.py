"""QMP replies (parsed JSON or the bytes QMP sent) to the stats model, for clients.

Every reader of ``query-stats`` replies (the client commands, ``top`` and the exporter)
decodes them with :func:`wire_results`.  ``top`` decodes every stat of every vCPU of
every VM at each refresh, the exporter at each scrape: msgspec turns the reply's bytes
straight into typed structs and checks QAPI's types on the way (a stat's value is a
``uint64``, a ``bool`` or a ``[uint64]``), in C.  That is two to three times faster than
``json.loads`` and a check in Python, and the error says where a reply is wrong
(``$[3].stats[7].value``).  Members we do not know are skipped, as a client of a newer
QEMU should.  Anything malformed is a :class:`ClientError`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

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

#: QAPI's ``uint64`` (msgspec checks the lower bound; Python ints have no upper one).
Uint64 = Annotated[int, msgspec.Meta(ge=0)]
#: A histogram's buckets: at least one (a kernel histogram has a size; without a bucket
#: there is no range to show or to export).
Buckets = Annotated[list[Uint64], msgspec.Meta(min_length=1)]


class WireStat(msgspec.Struct, gc=False):
    """QAPI's ``Stats``: a name and a ``StatsValue`` (scalar, boolean or buckets)."""

    name: str
    value: Uint64 | bool | Buckets


class WireResult(msgspec.Struct, gc=False, rename={"qom_path": "qom-path"}):
    """QAPI's ``StatsResult``, its provider as the text sent (a reader that needs the
    enum checks it: ``top`` and the exporter show any provider)."""

    provider: str
    stats: list[WireStat]
    qom_path: str | None = None


_RESULTS = msgspec.json.Decoder(list[WireResult])


def wire_results(reply: bytes | Any, target: str = "") -> list[WireResult]:
    """``query-stats``'s return value, as the bytes QMP sent or as decoded JSON (a
    recording's line, a qemu.qmp reply), in wire order; :class:`ClientError` saying
    where it is malformed."""
    try:
        if isinstance(reply, bytes | bytearray | memoryview):
            return _RESULTS.decode(reply)
        return msgspec.convert(reply, list[WireResult])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        what = f" for target {target}" if target else ""
        raise ClientError(f"malformed query-stats reply{what}: {exc}") from None


def _provider(text: Any) -> StatsProvider:
    try:
        return StatsProvider(text)
    except ValueError:
        raise ClientError(f"malformed reply: unknown provider {text!r}") from None


def results_from_wire(reply: bytes | Any) -> list[StatsResult]:
    """``query-stats``'s return value as results; :class:`ClientError` if malformed."""
    return [
        StatsResult(_provider(r.provider), [(s.name, s.value) for s in r.stats], r.qom_path)
        for r in wire_results(reply)
    ]


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
