"""libvirt's typed parameters put back into this kernel's layout: served as a stats fd of
the same VM would be, but for what libvirt drops (histograms), which is absent, never a
made-up value.  The layouts are the real kernel's, read from a throwaway VM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kvm.conftest import requires_kvm
from vmstats.demo import DemoVM
from vmstats.kvm.probe import KernelLayouts, kernel_layouts
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.libvirt.values import LibvirtStatsFile, domain_stats
from vmstats.stats import StatsRegistry
from vmstats.stats.commands import stats_dispatcher

pytestmark = [pytest.mark.kvm, requires_kvm]

#: libvirt's suffix for each QAPI stat type (histograms have none: libvirt drops them).
SUFFIX = {"cumulative": "sum", "instant": "cur", "peak": "max"}


@pytest.fixture(scope="module")
def layouts() -> KernelLayouts:
    return kernel_layouts()


@pytest.fixture
def demo() -> Iterator[DemoVM]:
    with DemoVM(vcpus=2, rate=0.001) as vm:
        vm.run_rounds(3)
        yield vm


def query(provider: KvmStatsProvider, command: str, target: str | None = None) -> Any:
    registry = StatsRegistry()
    registry.add_stats_callbacks(provider)
    arguments = None if target is None else {"target": target}
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    return stats_dispatcher(registry).dispatch(request)["return"]


def as_libvirt(schemas: dict[str, dict[str, str]], replies: dict[str, Any],
               numbers: dict[str, int]) -> dict[str, object]:  # fmt: skip
    """What libvirt's VM and vCPU groups give for these replies: ``vm.NAME.SUFFIX``,
    ``vcpu.N.NAME.SUFFIX`` (N the vCPU's number, by its QOM path in ``numbers``; a reply
    lists vCPUs in QEMU's wire order, last first), booleans as bools, no histograms; and
    libvirt's own keys."""
    params: dict[str, object] = {"vcpu.current": 2, "vcpu.maximum": 2}
    for target in ("vm", "vcpu"):
        for result in replies[target]:
            prefix = "vm" if target == "vm" else f"vcpu.{numbers[result['qom-path']]}"
            params[f"{prefix}.state"] = 1
            params[f"{prefix}.time"] = 123_000_000
            for stat in result["stats"]:
                kind = schemas[target][stat["name"]]
                if kind in SUFFIX:
                    params[f"{prefix}.{stat['name']}.{SUFFIX[kind]}"] = stat["value"]
    return params


def test_libvirts_values_are_served_as_the_fds_serve_them(
    demo: DemoVM, layouts: KernelLayouts
) -> None:
    # One read of the fds, both what libvirt would give and what is expected: a host's
    # own activity may move a VM-level counter between two reads (seen once).
    schemas = {s["target"]: {v["name"]: v["type"] for v in s["stats"]}
               for s in query(demo.provider, "query-stats-schemas")}  # fmt: skip
    replies = {t: query(demo.provider, "query-stats", t) for t in ("vm", "vcpu")}
    numbers = {v.qom_path: i for i, v in enumerate(demo.provider.vcpus)}
    stats = domain_stats(as_libvirt(schemas, replies, numbers))
    vm = LibvirtStatsFile(layouts.vm, "libvirt-test")
    vm.update(stats.vm)
    vcpus = []
    for number, values in sorted(stats.vcpus.items()):
        file = LibvirtStatsFile(layouts.vcpu, f"libvirt-test/vcpu-{number}")
        file.update(values)
        vcpus.append(VcpuStatsFile(demo.provider.vcpus[number].qom_path, file))
    ours = KvmStatsProvider(vm, vcpus)
    # The schema: the kernel's, the same as the fds give (histograms included).
    assert query(ours, "query-stats-schemas") == query(demo.provider, "query-stats-schemas")
    for target in ("vm", "vcpu"):
        expected = replies[target]
        for result in expected:  # what libvirt cannot give is absent
            result["stats"] = [s for s in result["stats"]
                               if schemas[target][s["name"]] in SUFFIX]  # fmt: skip
        assert query(ours, "query-stats", target) == expected
    histograms = {n for n, kind in schemas["vcpu"].items() if kind not in SUFFIX}
    assert histograms
    assert vcpus[0].file.omitted == histograms


def test_a_stat_under_another_types_suffix_or_out_of_range_is_omitted(
    layouts: KernelLayouts,
) -> None:
    names = [d.name for d in layouts.vcpu.descriptors if d.size == 1]
    file = LibvirtStatsFile(layouts.vcpu, "x")
    assert file.omitted == {d.name for d in layouts.vcpu.descriptors}  # nothing read yet
    params = {f"vcpu.0.{names[0]}.bogus": 5, f"vcpu.0.{names[1]}.sum": -1,
              f"vcpu.0.{names[2]}.sum": 1 << 64, "vcpu.0.delay": 7}  # fmt: skip
    file.update(domain_stats(params).vcpus.get(0, {}))
    assert {names[0], names[1], names[2]} <= file.omitted


@given(st.dictionaries(st.text(max_size=30), st.one_of(st.integers(), st.booleans(),
                                                       st.text(), st.floats())))  # fmt: skip
def test_any_parameters_parse_without_error(params: dict[str, object]) -> None:
    stats = domain_stats(params)
    for values in [stats.vm, *stats.vcpus.values()]:
        assert all(0 <= v < 1 << 64 for v in values.values())
