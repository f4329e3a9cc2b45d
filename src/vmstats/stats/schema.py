"""``qapi/stats.json`` as data: the single declaration of the stats wire types and commands.

Validation of arguments, encoding of replies and introspection all derive from it
(:mod:`vmstats.qapi`).  Values marked ``since`` exist only when serving that QEMU version.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from vmstats.qapi.schema import Schema, Version
from vmstats.stats.model import (
    Stats,
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)

#: The QEMU release whose wire we reproduce by default (the one real QEMU installs here).
DEFAULT_VERSION: Version = (7, 2)

STATS_QAPI: list[dict[str, Any]] = [
    {"enum": "StatsType",
     "data": ["cumulative", "instant", "peak", "linear-histogram", "log2-histogram"]},
    {"enum": "StatsUnit", "data": ["bytes", "seconds", "cycles", "boolean"]},
    {"enum": "StatsProvider",
     "data": ["kvm", {"name": "cryptodev", "since": "8.0"},
              {"name": "tracepoints", "extension": True}]},
    {"enum": "StatsTarget", "data": ["vm", "vcpu", {"name": "cryptodev", "since": "8.0"}]},
    {"struct": "StatsRequest", "data": {"provider": "StatsProvider", "*names": ["str"]}},
    {"struct": "StatsVCPUFilter", "data": {"*vcpus": ["str"]}},
    {"union": "StatsFilter",
     "base": {"target": "StatsTarget", "*providers": ["StatsRequest"]},
     "discriminator": "target",
     "data": {"vcpu": "StatsVCPUFilter"}},
    {"alternate": "StatsValue",
     "data": {"scalar": "uint64", "boolean": "bool", "list": ["uint64"]}},
    {"struct": "Stats", "data": {"name": "str", "value": "StatsValue"}},
    {"struct": "StatsResult",
     "data": {"provider": "StatsProvider", "*qom-path": "str", "stats": ["Stats"]}},
    {"struct": "StatsSchemaValue",
     "data": {"name": "str", "type": "StatsType", "*unit": "StatsUnit", "*base": "int8",
              "exponent": "int16", "*bucket-size": "uint32"}},
    {"struct": "StatsSchema",
     "data": {"provider": "StatsProvider", "target": "StatsTarget",
              "stats": ["StatsSchemaValue"]}},
    {"command": "query-stats", "data": "StatsFilter", "boxed": True,
     "returns": ["StatsResult"]},
    {"command": "query-stats-schemas", "data": {"*provider": "StatsProvider"},
     "returns": ["StatsSchema"]},
]  # fmt: skip

BINDINGS = {
    "StatsType": StatsType,
    "StatsUnit": StatsUnit,
    "StatsProvider": StatsProvider,
    "StatsTarget": StatsTarget,
    "StatsRequest": StatsRequest,
    "StatsFilter": StatsFilter,
    "Stats": Stats,
    "StatsResult": StatsResult,
    "StatsSchemaValue": StatsSchemaValue,
    "StatsSchema": StatsSchema,
}


@lru_cache(maxsize=8)
def stats_schema(version: Version = DEFAULT_VERSION) -> Schema:
    """The stats schema as QEMU ``version`` has it, bound to :mod:`.model`."""
    return Schema(STATS_QAPI, version=version, bindings=BINDINGS)
