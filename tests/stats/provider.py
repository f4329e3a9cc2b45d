"""A provider that exists only in the tests: a fixed VM and vCPUs with known stats.

It behaves as QEMU's providers do (names filter with ``apply_str_list_filter``, objects
left with no stat omitted, stats and buckets prepended), and records every call so the
tests can assert how the engine invoked it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vmstats.qapi import GenericError
from vmstats.stats import (
    StatsProvider,
    StatsResult,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
    StatsUnit,
    StatsValue,
)
from vmstats.stats.registry import apply_str_list_filter

VM_SCHEMA = [
    StatsSchemaValue("pages", StatsType.INSTANT),
    StatsSchemaValue("flushes", StatsType.CUMULATIVE),
]
VCPU_SCHEMA = [
    StatsSchemaValue("exits", StatsType.CUMULATIVE),
    StatsSchemaValue("wait_ns", StatsType.CUMULATIVE, StatsUnit.SECONDS, 10, -9),
    StatsSchemaValue("busy", StatsType.INSTANT, StatsUnit.BOOLEAN),
    StatsSchemaValue("wait_hist", StatsType.LOG2_HISTOGRAM, StatsUnit.SECONDS, 10, -9),
]


def vcpu_path(index: int) -> str:
    return f"/machine/unattached/device[{index}]"


@dataclass
class FakeProvider:
    provider: StatsProvider = StatsProvider.KVM
    vcpus: int = 3
    targets: tuple[StatsTarget, ...] = (StatsTarget.VM, StatsTarget.VCPU)
    fail_with: str | None = None
    calls: list[tuple[StatsTarget, Sequence[str] | None, Sequence[str] | None]] = field(
        default_factory=list
    )

    def _values(self, target: StatsTarget, index: int) -> list[tuple[str, StatsValue]]:
        if target == StatsTarget.VM:
            return [("pages", 100), ("flushes", 7)]
        return [
            ("exits", 1000 + index),
            ("wait_ns", 50 * index),
            ("busy", index == 1),
            ("wait_hist", [index, 2, 3]),
        ]

    def stats(
        self,
        target: StatsTarget,
        names: Sequence[str] | None,
        targets: Sequence[str] | None,
    ) -> Iterable[StatsResult]:
        self.calls.append((target, names, targets))
        if self.fail_with:
            raise GenericError(self.fail_with)
        if target not in self.targets:
            return []
        objects = [None] if target == StatsTarget.VM else list(range(self.vcpus))
        out = []
        for index in objects:
            path = None if index is None else vcpu_path(index)
            if path is not None and not apply_str_list_filter(path, targets):
                continue
            stats = [
                (name, value[::-1] if isinstance(value, list) else value)
                for name, value in self._values(target, index or 0)
                if apply_str_list_filter(name, names)
            ]
            if stats:
                out.append(StatsResult(self.provider, stats[::-1], path))
        return out

    def schemas(self) -> Iterable[StatsSchema]:
        if self.fail_with:
            raise GenericError(self.fail_with)
        by_target = {StatsTarget.VM: VM_SCHEMA, StatsTarget.VCPU: VCPU_SCHEMA}
        return [StatsSchema(self.provider, t, by_target[t][::-1]) for t in self.targets]
