"""A provider that replays QEMU's captured replies: the same data QEMU formatted."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import CAPTURES
from vmstats.qapi.visitor import visit
from vmstats.stats import StatsProvider, StatsResult, StatsSchema, StatsTarget, StatsValue
from vmstats.stats.registry import apply_str_list_filter
from vmstats.stats.schema import stats_schema


def load(name: str) -> object:
    return json.loads((CAPTURES / name).read_bytes())["return"]


@dataclass
class ReplayProvider:
    """Serves captured results; ``overrides`` replaces values (name -> value) everywhere."""

    results: dict[StatsTarget, list[StatsResult]]
    schema: list[StatsSchema]
    provider: StatsProvider = StatsProvider.KVM
    overrides: dict[str, StatsValue] = field(default_factory=dict)

    @classmethod
    def from_captures(
        cls,
        vm: str = "20-query-stats-vm.json",
        vcpu: str = "21-query-stats-vcpu.json",
        schemas: str = "10-query-stats-schemas.json",
    ) -> ReplayProvider:
        schema = stats_schema()
        return cls(
            {
                StatsTarget.VM: visit(schema, "[StatsResult]", load(vm)),
                StatsTarget.VCPU: visit(schema, "[StatsResult]", load(vcpu)),
            },
            visit(schema, "[StatsSchema]", load(schemas)),
        )

    @property
    def cpus(self) -> list[str]:
        return [r.qom_path or "" for r in reversed(self.results[StatsTarget.VCPU])]

    def stats(
        self, target: StatsTarget, names: Sequence[str] | None, targets: Sequence[str] | None
    ) -> Iterable[StatsResult]:
        out = []
        for result in reversed(self.results.get(target, [])):  # add order = wire reversed
            if result.qom_path is not None and not apply_str_list_filter(result.qom_path, targets):
                continue
            stats = [
                (n, self.overrides.get(n, v))
                for n, v in result.stats
                if apply_str_list_filter(n, names)
            ]
            if stats:
                out.append(StatsResult(result.provider, stats, result.qom_path))
        return out

    def schemas(self) -> Iterable[StatsSchema]:
        return list(reversed(self.schema))


def capture_text(name: str) -> str:
    return Path(CAPTURES / name).read_bytes().decode()
