"""Which series a scrape exports: what operators ask of an exporter when a host's series
cost their Prometheus too much (``--series FILE``, TOML, reread on SIGHUP)::

    vcpus = "vm"                     # "each" (default): a series per vCPU;
                                     # "vm": one per VM, summed over its vCPUs
    histograms = false               # default true
    include = ["kvm_vcpu_*"]         # metric name globs; none given: every metric
    exclude = ["*_hist_seconds"]     # taken out of what include lets in

A host of 256 VMs x 8 vCPUs is about 300,000 series, nine in ten of them histogram
buckets per vCPU (docs/metrics.md says what each choice saves).  Summed per VM, a
cumulative or instant stat is the sum over the VM's vCPUs, a peak the highest, a
histogram the bucket-wise sum (its ``_sum`` and ``_count`` the sums): the same families,
without the ``vcpu`` label.  Globs match a family's name as exported, with or without a
counter's ``_total``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmstats.errors import UsageError
from vmstats.exporter.mapping import Kind
from vmstats.exporter.mapping import Metric as StatMetric
from vmstats.stats.model import StatsType, StatsValue
from vmstats.tomlfile import read_toml

VCPU_SERIES = ("each", "vm")


@dataclass(frozen=True)
class SeriesPolicy:
    """What a scrape exports.  The default exports everything, a series per vCPU."""

    vcpus: str = "each"
    histograms: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _kept: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def per_vm(self) -> bool:
        return self.vcpus == "vm"

    def keeps(self, metric: StatMetric) -> bool:
        """Is this metric exported?  Decided once per family name."""
        kept = self._kept.get(metric.name)
        if kept is None:
            kept = self._kept[metric.name] = self._decide(metric)
        return kept

    def _decide(self, metric: StatMetric) -> bool:
        if metric.kind is Kind.HISTOGRAM and not self.histograms:
            return False
        names = [metric.name] + ([f"{metric.name}_total"] if metric.kind is Kind.COUNTER else [])

        def matches(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)

        return (not self.include or matches(self.include)) and not matches(self.exclude)


def summed(metric: StatMetric, values: list[StatsValue]) -> StatsValue:
    """One stat of a VM's vCPUs as one value: the sum (bucket-wise for a histogram), or
    the highest for a peak."""
    if metric.stat.type.is_histogram:
        lists = [v for v in values if isinstance(v, list)]
        width = max(map(len, lists), default=0)
        return [sum(v[i] for v in lists if i < len(v)) for i in range(width)]
    numbers = [v for v in values if not isinstance(v, list)]
    if metric.stat.type is StatsType.PEAK:
        return max(numbers, default=0)
    return sum(numbers)


#: The settings of a series file.
SETTINGS = ("vcpus", "histograms", "include", "exclude")


def read_series(path: Path) -> SeriesPolicy:
    """A series file, checked; :class:`UsageError` naming what is wrong."""
    return policy_of(read_toml(path, SETTINGS), str(path))


def policy_of(config: Mapping[str, Any], where: str) -> SeriesPolicy:
    """The policy a series file's settings give; :class:`UsageError` naming a wrong one."""
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        raise UsageError(f"{where}: unknown settings {', '.join(unknown)}")
    vcpus = config.get("vcpus", "each")
    if vcpus not in VCPU_SERIES:
        raise UsageError(f"{where}: vcpus must be one of {', '.join(VCPU_SERIES)}, not {vcpus!r}")
    histograms = config.get("histograms", True)
    if not isinstance(histograms, bool):
        raise UsageError(f"{where}: histograms must be true or false, not {histograms!r}")
    globs = {}
    for key in ("include", "exclude"):
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where}: {key} must be a list of metric name globs")
        globs[key] = tuple(value)
    return SeriesPolicy(vcpus, histograms, globs["include"], globs["exclude"])
