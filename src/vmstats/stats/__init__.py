"""QEMU's statistics subsystem, pure Python (no I/O): model, declaration, query engine."""

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
    StatsValue,
    StatsVCPUFilter,
)
from vmstats.stats.registry import StatsCallbacks, StatsRegistry

__all__ = [
    "Stats",
    "StatsCallbacks",
    "StatsFilter",
    "StatsProvider",
    "StatsRegistry",
    "StatsRequest",
    "StatsResult",
    "StatsSchema",
    "StatsSchemaValue",
    "StatsTarget",
    "StatsType",
    "StatsUnit",
    "StatsVCPUFilter",
    "StatsValue",
]
