"""The kvm provider maps descriptors exactly as QEMU's KVM provider (reference §4).

Crafted stats files on disk stand in for the kernel, so that every odd case (unknown
type, unit or base, boolean histograms, size-1 histograms) can be produced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kvm.statsfile import (
    BOOLEAN,
    BYTES,
    CYCLES,
    INSTANT,
    LINEAR_HIST,
    LOG_HIST,
    PEAK,
    POW2,
    SECONDS,
    Desc,
    StatsFileSpec,
)
from vmstats.kvm.binstats import LayoutCache, StatsFile
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.qapi import json as qjson
from vmstats.qapi.dispatch import Dispatcher
from vmstats.qmp.session import encode_response
from vmstats.stats import StatsRegistry
from vmstats.stats.commands import stats_dispatcher
from vmstats.stats.model import StatsTarget

DESCS = [
    Desc("plain"),  # cumulative, no unit
    Desc("flag", INSTANT | BOOLEAN),  # bool from first u64
    Desc("wait_ns", SECONDS, exponent=-9),  # base 10 shown
    Desc("mem", PEAK | BYTES | POW2, exponent=12),  # base 2 shown
    Desc("tsc", CYCLES),  # exp 0: no base
    Desc("lin", LINEAR_HIST, size=3, bucket_size=10),  # bucket-size shown
    Desc("log", LOG_HIST | SECONDS, exponent=-9, size=4),  # reversed list
    Desc("boolhist", LINEAR_HIST | BOOLEAN, size=2, bucket_size=1),  # collapses to bool
    Desc("onehist", LOG_HIST, size=1),  # size 1: scalar
    Desc("badtype", 0x7),  # dropped everywhere
    Desc("badunit", 0x50),  # dropped everywhere
    Desc("badbase0", 0x200),  # exp 0: in schema only
    Desc("badbase3", 0x200, exponent=3),  # dropped everywhere
    Desc("future", 0x10000),  # unknown bit: ignored
]
VALUES = [5, 2, 300, 4, 6, 1, 2, 3, 10, 20, 30, 40, 0, 1, 9, 8, 8, 8, 8, 77]


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    path = tmp_path / "vcpu-stats"
    path.write_bytes(StatsFileSpec(DESCS, values=VALUES).build())
    fd = os.open(path, os.O_RDONLY)
    registry = StatsRegistry()
    file = StatsFile(fd, cache=LayoutCache())
    registry.add_stats_callbacks(
        KvmStatsProvider(file, [VcpuStatsFile("/machine/unattached/device[0]", file)])
    )
    yield stats_dispatcher(registry)
    os.close(fd)


def call(d: Dispatcher, command: str, arguments: dict[str, Any] | None = None) -> Any:
    return d.dispatch({"execute": command, "arguments": arguments or {}})["return"]


def test_values_are_shaped_and_ordered_as_qemu(dispatcher: Dispatcher) -> None:
    [result] = call(dispatcher, "query-stats", {"target": "vm"})
    assert result == {
        "provider": "kvm",
        "stats": [
            {"name": "future", "value": 77},
            {"name": "onehist", "value": 9},
            {"name": "boolhist", "value": False},  # first u64 only: [0, 1] is false
            {"name": "log", "value": [40, 30, 20, 10]},
            {"name": "lin", "value": [3, 2, 1]},
            {"name": "tsc", "value": 6},
            {"name": "mem", "value": 4},
            {"name": "wait_ns", "value": 300},
            {"name": "flag", "value": True},
            {"name": "plain", "value": 5},
        ],
    }


def test_schema_is_mapped_as_qemu(dispatcher: Dispatcher) -> None:
    schemas = call(dispatcher, "query-stats-schemas")
    assert [s["target"] for s in schemas] == ["vcpu", "vm"]
    assert schemas[0]["stats"] == schemas[1]["stats"]
    assert schemas[1]["stats"] == [
        {"name": "future", "exponent": 0, "type": "cumulative"},
        {"name": "badbase0", "exponent": 0, "type": "cumulative"},
        {"name": "onehist", "exponent": 0, "type": "log2-histogram"},
        {
            "name": "boolhist",
            "unit": "boolean",
            "bucket-size": 1,
            "exponent": 0,
            "type": "linear-histogram",
        },
        {"name": "log", "unit": "seconds", "base": 10, "exponent": -9, "type": "log2-histogram"},
        {"name": "lin", "bucket-size": 10, "exponent": 0, "type": "linear-histogram"},
        {"name": "tsc", "unit": "cycles", "exponent": 0, "type": "cumulative"},
        {"name": "mem", "unit": "bytes", "base": 2, "exponent": 12, "type": "peak"},
        {"name": "wait_ns", "unit": "seconds", "base": 10, "exponent": -9, "type": "cumulative"},
        {"name": "flag", "unit": "boolean", "exponent": 0, "type": "instant"},
        {"name": "plain", "exponent": 0, "type": "cumulative"},
    ]


def test_names_filter_and_vanishing_object(dispatcher: Dispatcher) -> None:
    reply = call(
        dispatcher,
        "query-stats",
        {
            "target": "vcpu",
            "providers": [{"provider": "kvm", "names": ["plain", "log", "badtype", "nope"]}],
        },
    )
    assert reply == [
        {
            "provider": "kvm",
            "stats": [{"name": "log", "value": [40, 30, 20, 10]}, {"name": "plain", "value": 5}],
            "qom-path": "/machine/unattached/device[0]",
        }
    ]
    assert (
        call(
            dispatcher,
            "query-stats",
            {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["badunit"]}]},
        )
        == []
    )


def test_unknown_paths_are_ignored(dispatcher: Dispatcher) -> None:
    assert call(dispatcher, "query-stats", {"target": "vcpu", "vcpus": ["/x"]}) == []


@pytest.mark.parametrize("wire", [True, False])  # the pre-encoded path, and the generic one
def test_wire_bytes_of_a_result(dispatcher: Dispatcher, wire: bool) -> None:
    reply = dispatcher.dispatch(
        {
            "execute": "query-stats",
            "arguments": {
                "target": "vcpu",
                "providers": [{"provider": "kvm", "names": ["flag", "plain"]}],
            },
        },
        wire=wire,
    )
    assert isinstance(reply["return"], qjson.RawJSON) == wire
    assert encode_response(reply) == (
        b'{"return": [{"provider": "kvm", "stats": [{"name": "flag", "value": true}, '
        b'{"name": "plain", "value": 5}], "qom-path": "/machine/unattached/device[0]"}]}\r\n'
    )


def test_a_vcpu_given_another_path_is_reported_under_it_though_its_data_stood_still(
    tmp_path: Path,
) -> None:
    """QEMU's socket, found after the fds, tells a vCPU's real QOM path: the next read
    says it, though the vCPU's data (and so the result kept for it) did not change."""
    path = tmp_path / "vcpu-stats"
    path.write_bytes(StatsFileSpec(DESCS, values=VALUES).build())
    fd = os.open(path, os.O_RDONLY)
    try:
        file = StatsFile(fd, cache=LayoutCache())
        provider = KvmStatsProvider(None, [VcpuStatsFile("/machine/unattached/device[0]", file)])
        [before] = provider.stats(StatsTarget.VCPU, None, None)
        provider.set_vcpus([VcpuStatsFile("/machine/peripheral/cpu0", file)])
        [after] = provider.stats(StatsTarget.VCPU, None, None)
    finally:
        os.close(fd)
    assert (before.qom_path, after.qom_path) == ("/machine/unattached/device[0]",
                                                 "/machine/peripheral/cpu0")  # fmt: skip
    assert after.stats == before.stats


def test_vms_of_one_layout_share_its_schema_and_its_oddities_are_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The VMs of a kernel have the same layouts: 256 of them keep one schema per target
    (not 256), and a layout's odd descriptors are logged once, not once per VM."""
    caplog.set_level("WARNING", logger="vmstats.kvm.provider")
    path = tmp_path / "vcpu-stats"
    path.write_bytes(StatsFileSpec(DESCS, values=VALUES).build())
    cache = LayoutCache()  # one per process, as the daemon's
    fds = [os.open(path, os.O_RDONLY) for _ in range(3)]
    try:
        providers = [KvmStatsProvider(None, [VcpuStatsFile("/machine/cpu[0]",
                                                           StatsFile(fd, cache=cache))])
                     for fd in fds]  # fmt: skip
        schemas = [provider.schemas() for provider in providers]
        for provider in providers:
            assert provider.stats(StatsTarget.VCPU, None, None)
    finally:
        for fd in fds:
            os.close(fd)
    assert schemas[0][0] is schemas[1][0] is schemas[2][0]
    said = [r.getMessage() for r in caplog.records if "'badunit'" in r.getMessage()]
    assert said == ["KVM stat 'badunit': unknown unit 0x50: dropped"]
