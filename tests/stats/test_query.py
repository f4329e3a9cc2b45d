"""query-stats / query-stats-schemas semantics, one row per case of the reference tables.

Each row sends real QMP arguments through the dispatcher (validation, engine, encoding)
against providers that exist only in the tests, and states what QEMU answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.qapi.dispatch import Dispatcher
from vmstats.stats import StatsProvider, StatsRegistry, StatsTarget
from vmstats.stats.commands import stats_dispatcher


def make(*providers: FakeProvider, version: tuple[int, int] = (7, 2)) -> Dispatcher:
    registry = StatsRegistry()
    for p in providers:
        registry.add_stats_callbacks(p)
    return stats_dispatcher(registry, version)


def run(d: Dispatcher, command: str, arguments: dict[str, Any] | None = None) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    return d.dispatch(request)


def paths(reply: dict[str, Any]) -> list[str | None]:
    return [r.get("qom-path") for r in reply["return"]]


def names(result: dict[str, Any]) -> list[str]:
    return [s["name"] for s in result["stats"]]


# --- filter semantics (reference §2, "Input / Effect") ---------------------------------

FILTER_ROWS = [
    # (case, arguments, expected qom-paths in wire order, expected calls to the provider)
    (
        "providers absent: every provider once, all names",
        {"target": "vcpu"},
        [vcpu_path(2), vcpu_path(1), vcpu_path(0)],
        1,
    ),
    ("providers []: no provider is called", {"target": "vcpu", "providers": []}, [], 0),
    (
        "same provider twice: called twice, results duplicated",
        {"target": "vm", "providers": [{"provider": "kvm"}, {"provider": "kvm"}]},
        [None, None],
        2,
    ),
    (
        "names []: that request contributes nothing",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": []}]},
        [],
        0,
    ),
    (
        "names that do not exist: object with no stat left is omitted",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["nope"]}]},
        [],
        1,
    ),
    (
        "vcpus absent: all vCPUs, last first",
        {"target": "vcpu", "providers": [{"provider": "kvm"}]},
        [vcpu_path(2), vcpu_path(1), vcpu_path(0)],
        1,
    ),
    ("vcpus []: nothing", {"target": "vcpu", "vcpus": []}, [], 0),
    (
        "vcpus: exact match, unknown ignored, output not in request order",
        {"target": "vcpu", "vcpus": [vcpu_path(0), "/machine/nope", vcpu_path(2)]},
        [vcpu_path(2), vcpu_path(0)],
        1,
    ),
    (
        "vcpus: no prefix or case-insensitive match",
        {
            "target": "vcpu",
            "vcpus": ["/machine/unattached/device[0", "/MACHINE/unattached/device[0]"],
        },
        [],
        1,
    ),
    ("target vm: one result without qom-path", {"target": "vm"}, [None], 1),
]


@pytest.mark.parametrize(
    ("case", "arguments", "expected", "calls"), FILTER_ROWS, ids=[r[0] for r in FILTER_ROWS]
)
def test_filter_semantics(
    case: str, arguments: dict[str, Any], expected: list[Any], calls: int
) -> None:
    provider = FakeProvider()
    reply = run(make(provider), "query-stats", arguments)
    assert paths(reply) == expected
    assert len(provider.calls) == calls


def test_names_filter_keeps_provider_order_not_request_order() -> None:
    reply = run(
        make(FakeProvider()),
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["wait_hist", "exits"]}]},
    )
    assert [names(r) for r in reply["return"]] == [["wait_hist", "exits"]] * 3
    reply = run(
        make(FakeProvider()),
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["exits", "wait_hist"]}]},
    )
    assert [names(r) for r in reply["return"]] == [["wait_hist", "exits"]] * 3


def test_engine_passes_none_for_absent_filters_and_lists_for_present() -> None:
    provider = FakeProvider()
    d = make(provider)
    run(d, "query-stats", {"target": "vcpu"})
    run(
        d,
        "query-stats",
        {
            "target": "vcpu",
            "vcpus": [vcpu_path(1)],
            "providers": [{"provider": "kvm", "names": ["exits"]}],
        },
    )
    assert provider.calls == [
        (StatsTarget.VCPU, None, None),
        (StatsTarget.VCPU, ["exits"], [vcpu_path(1)]),
    ]


def test_wire_order_is_qemus_prepend_order() -> None:
    """Stats reversed, histogram reversed, vCPUs descending, QDict key order."""
    reply = run(make(FakeProvider()), "query-stats", {"target": "vcpu", "vcpus": [vcpu_path(1)]})
    assert reply == {
        "return": [
            {
                "provider": "kvm",
                "stats": [
                    {"name": "wait_hist", "value": [3, 2, 1]},
                    {"name": "busy", "value": True},
                    {"name": "wait_ns", "value": 50},
                    {"name": "exits", "value": 1001},
                ],
                "qom-path": vcpu_path(1),
            }
        ]
    }
    assert list(reply["return"][0]) == ["provider", "stats", "qom-path"]


def test_registration_order_decides_result_order() -> None:
    """Later registrations come first on the wire (results are prepended)."""
    kvm = FakeProvider(StatsProvider.KVM)
    crypto = FakeProvider(StatsProvider.CRYPTODEV)
    reply = run(make(kvm, crypto, version=(8, 0)), "query-stats", {"target": "vm"})
    assert [r["provider"] for r in reply["return"]] == ["cryptodev", "kvm"]
    reply = run(make(crypto, kvm, version=(8, 0)), "query-stats", {"target": "vm"})
    assert [r["provider"] for r in reply["return"]] == ["kvm", "cryptodev"]


def test_unregistered_provider_is_silently_empty() -> None:
    reply = run(
        make(FakeProvider(StatsProvider.KVM), version=(8, 0)),
        "query-stats",
        {"target": "vm", "providers": [{"provider": "cryptodev"}]},
    )
    assert reply == {"return": []}


def test_target_not_served_gives_no_output_and_no_error() -> None:
    provider = FakeProvider(targets=(StatsTarget.VM,))
    assert run(make(provider), "query-stats", {"target": "vcpu"}) == {"return": []}
    assert len(provider.calls) == 1


def test_cryptodev_target_reaches_provider_without_vcpu_filter_on_8_0() -> None:
    provider = FakeProvider()
    assert run(make(provider, version=(8, 0)), "query-stats", {"target": "cryptodev"}) == {
        "return": []
    }
    assert provider.calls == [(StatsTarget.CRYPTODEV, None, None)]


def test_first_provider_error_fails_the_whole_command() -> None:
    good = FakeProvider()
    bad = FakeProvider(fail_with="KVM stats: ioctl failed: Bad file descriptor")
    later = FakeProvider(fail_with="second error")
    reply = run(make(good, bad, later), "query-stats", {"target": "vm"})
    assert reply == {
        "error": {"class": "GenericError", "desc": "KVM stats: ioctl failed: Bad file descriptor"}
    }
    reply = run(make(good, bad), "query-stats-schemas")
    assert reply["error"]["desc"] == "KVM stats: ioctl failed: Bad file descriptor"


# --- query-stats-schemas ---------------------------------------------------------------


def test_schemas_order_and_encoding() -> None:
    reply = run(make(FakeProvider()), "query-stats-schemas", {"provider": "kvm"})
    assert [s["target"] for s in reply["return"]] == ["vcpu", "vm"]
    vcpu = reply["return"][0]
    assert list(vcpu) == ["provider", "stats", "target"]
    assert vcpu["stats"][0] == {
        "name": "wait_hist",
        "unit": "seconds",
        "base": 10,
        "exponent": -9,
        "type": "log2-histogram",
    }
    assert list(vcpu["stats"][0]) == ["name", "unit", "base", "exponent", "type"]
    assert vcpu["stats"][-1] == {"name": "exits", "exponent": 0, "type": "cumulative"}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (None, ["cryptodev", "cryptodev", "kvm", "kvm"]),
        ({"provider": "kvm"}, ["kvm", "kvm"]),
        ({"provider": "cryptodev"}, ["cryptodev", "cryptodev"]),
    ],
)
def test_schemas_provider_filter(arguments: dict[str, Any] | None, expected: list[str]) -> None:
    d = make(FakeProvider(StatsProvider.KVM), FakeProvider(StatsProvider.CRYPTODEV), version=(8, 0))
    assert [s["provider"] for s in run(d, "query-stats-schemas", arguments)["return"]] == expected


def test_schemas_unregistered_provider_is_empty() -> None:
    d = make(FakeProvider(StatsProvider.KVM), version=(8, 0))
    assert run(d, "query-stats-schemas", {"provider": "cryptodev"}) == {"return": []}
    assert run(make(), "query-stats-schemas") == {"return": []}
