"""vmstats: observe, monitor and measure KVM virtual machines, QEMU-compatible.

The public API a Python VMM embeds: the stats model and registry (:mod:`vmstats.stats`),
and the QAPI machinery that speaks QEMU's wire (:mod:`vmstats.qapi`).
"""

from vmstats.qapi import CommandNotFound, GenericError, QapiError
from vmstats.stats import (
    Stats,
    StatsCallbacks,
    StatsFilter,
    StatsProvider,
    StatsRegistry,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
)

__version__ = "0.1.0"

__all__ = [
    "CommandNotFound",
    "GenericError",
    "QapiError",
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
    "__version__",
]
