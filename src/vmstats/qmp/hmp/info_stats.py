"""HMP ``info stats``: QEMU's ``hmp_info_stats``, its argument checks, filter and text.

The layout of each line (type, unit text, bucket size, signed values, the trailing space
after histogram buckets) is QEMU 7.2's byte for byte (reference §3); the unit text comes
from :func:`vmstats.stats.units.hmp_unit`, shared with the other tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vmstats.errors import QapiError, StatsError
from vmstats.qapi.errors import qmp_error
from vmstats.qmp.hmp.args import to_int32, to_int64
from vmstats.stats.model import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsResult,
    StatsSchema,
    StatsTarget,
    StatsType,
)
from vmstats.stats.registry import StatsRegistry
from vmstats.stats.units import hmp_unit


def info_stats(
    printf: Callable[[str], None],
    registry: StatsRegistry,
    providers: Sequence[StatsProvider],
    current_cpu: str | None,
    target_text: str,
    names: str | None,
    provider_text: str | None,
) -> None:
    """``info stats TARGET [NAMES] [PROVIDER]`` for the CPU at QOM path ``current_cpu``.

    ``providers`` are the StatsProvider values this QEMU version knows (7.2: kvm only),
    and vmstats' extensions, which answer only when PROVIDER names them.
    """
    try:
        target = StatsTarget(target_text)
        if target == StatsTarget.CRYPTODEV and StatsProvider.CRYPTODEV not in providers:
            raise ValueError(target_text)
    except ValueError:
        printf(f"invalid stats target {target_text}\n")
        return
    provider: StatsProvider | None = None
    if provider_text is not None:
        try:
            provider = StatsProvider(provider_text)
            if provider not in providers:
                raise ValueError(provider_text)
        except ValueError:
            printf(f"invalid stats provider {provider_text}\n")
            return
    try:
        schemas = registry.query_stats_schemas(provider)
        vcpus: list[str] | None = None
        if target == StatsTarget.VCPU:
            if current_cpu is None:
                return
            vcpus = [current_cpu]
        results = registry.query_stats(stats_filter(target, names, provider, providers, vcpus))
    except (QapiError, StatsError) as err:
        printf(f"{qmp_error(err)['desc']}\n")
        return
    for result in results:
        _print_result(printf, target, provider is None, result, schemas)


def stats_filter(
    target: StatsTarget,
    names: str | None,
    provider: StatsProvider | None,
    providers: Sequence[StatsProvider],
    vcpus: list[str] | None,
) -> StatsFilter:
    """The ``query-stats`` filter QEMU's HMP builds from its arguments."""
    if names is None and provider is None:
        return StatsFilter(target, None, vcpus)
    wanted = None if names is None or names == "*" else names.split(",")
    requests = [StatsRequest(p, wanted) for p in providers
                if p == provider or (provider is None and not p.is_extension)]  # fmt: skip
    return StatsFilter(target, requests[::-1], vcpus)  # QEMU prepends each request


def _print_result(
    printf: Callable[[str], None],
    target: StatsTarget,
    show_provider: bool,
    result: StatsResult,
    schemas: Sequence[StatsSchema],
) -> None:
    schema = next(
        (s for s in schemas if s.provider == result.provider and s.target == target), None
    )
    if schema is None:
        printf(f"failed to find schema list for {result.provider.value}\n")
        return
    if show_provider:
        printf(f"provider: {result.provider.value}\n")
    entries = list(schema.stats)
    index = 0
    for name, value in result.stats:
        while index < len(entries) and entries[index].name != name:
            index += 1
        if index >= len(entries):
            printf(f"failed to find schema entry for {name}\n")
            return
        entry = entries[index]
        index += 1
        unit = hmp_unit(entry)
        line = f"    {name} ({entry.type.value}{', ' if unit else ''}{unit}"
        if entry.type == StatsType.LINEAR_HISTOGRAM and entry.bucket_size is not None:
            line += f", bucket size={to_int32(entry.bucket_size)}"
        line += ")"
        if isinstance(value, bool):
            line += f": {'yes' if value else 'no'}\n"
        elif isinstance(value, int):
            line += f": {to_int64(value)}\n"
        else:
            line += ": " + "".join(f"[{i}]={to_int64(v)} " for i, v in enumerate(value, 1))
            line += "\n"
        printf(line)
