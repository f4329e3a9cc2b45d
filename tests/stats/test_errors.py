"""Argument errors: QEMU's class and text for every kind of bad input.

Each row was checked against real QEMU 7.2 (see tests/qmp for the live comparison).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.stats.provider import FakeProvider
from vmstats.qapi.dispatch import Dispatcher
from vmstats.stats import StatsRegistry
from vmstats.stats.commands import stats_dispatcher

ROWS: list[tuple[str, Any, str]] = [
    # query-stats
    ("query-stats", None, "Parameter 'target' is missing"),
    ("query-stats", {}, "Parameter 'target' is missing"),
    ("query-stats", {"providers": []}, "Parameter 'target' is missing"),
    ("query-stats", {"target": "foo"}, "Parameter 'target' does not accept value 'foo'"),
    (
        "query-stats",
        {"target": "cryptodev"},
        "Parameter 'target' does not accept value 'cryptodev'",
    ),
    ("query-stats", {"target": None}, "Invalid parameter type for 'target', expected: string"),
    ("query-stats", {"target": 1}, "Invalid parameter type for 'target', expected: string"),
    (
        "query-stats",
        {"target": "vm", "vcpus": ["/machine/unattached/device[0]"]},
        "Parameter 'vcpus' is unexpected",
    ),
    ("query-stats", {"target": "vm", "vcpus": []}, "Parameter 'vcpus' is unexpected"),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "foo"}]},
        "Parameter 'provider' does not accept value 'foo'",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": 7}]},
        "Invalid parameter type for 'providers[0].provider', expected: string",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{}]},
        "Parameter 'providers[0].provider' is missing",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm"}, {"names": []}]},
        "Parameter 'providers[1].provider' is missing",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": None},
        "Invalid parameter type for 'providers', expected: array",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": {}},
        "Invalid parameter type for 'providers', expected: array",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [1]},
        "Invalid parameter type for 'providers[0]', expected: object",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": "exits"}]},
        "Invalid parameter type for 'providers[0].names', expected: array",
    ),
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm", "names": ["a", None]}]},
        "Invalid parameter type for 'providers[0].names[1]', expected: string",
    ),
    (
        "query-stats",
        {"target": "vcpu", "vcpus": "x"},
        "Invalid parameter type for 'vcpus', expected: array",
    ),
    (
        "query-stats",
        {"target": "vcpu", "vcpus": [1]},
        "Invalid parameter type for 'vcpus[0]', expected: string",
    ),
    ("query-stats", {"target": "vm", "foo": 1}, "Parameter 'foo' is unexpected"),
    (
        "query-stats",
        {"target": "vm", "a": 1, "b": 2, "c": 3, "zz": 4},
        "Parameter 'b' is unexpected",
    ),  # QEMU names the first key of its GHashTable
    (
        "query-stats",
        {"target": "vcpu", "providers": [{"provider": "kvm", "x": 1, "y": 2}]},
        "Parameter 'providers[0].y' is unexpected",
    ),
    (
        "query-stats",
        {"target": "vm", "providers": [{"provider": "kvm", "z": 1}], "zz": 2},
        "Parameter 'providers[0].z' is unexpected",
    ),  # inner struct is checked first
    ("query-stats", {"target": "\u00e9"}, "Parameter 'target' does not accept value '\u00e9'"),
    # query-stats-schemas
    (
        "query-stats-schemas",
        {"provider": "foo"},
        "Parameter 'provider' does not accept value 'foo'",
    ),
    (
        "query-stats-schemas",
        {"provider": None},
        "Invalid parameter type for 'provider', expected: string",
    ),
    ("query-stats-schemas", {"provider": "kvm", "x": 1}, "Parameter 'x' is unexpected"),
    ("query-stats-schemas", {"target": "vm"}, "Parameter 'target' is unexpected"),
]

ENVELOPE_ROWS: list[tuple[Any, str, str]] = [
    ({"execute": "query-statz"}, "CommandNotFound", "The command query-statz has not been found"),
    (
        {"execute": "query-stats", "arguments": []},
        "GenericError",
        "QMP input member 'arguments' must be an object",
    ),
    ({"execute": 1}, "GenericError", "QMP input member 'execute' must be a string"),
    ({"arguments": {}}, "GenericError", "QMP input lacks member 'execute'"),
    ({"execute": "query-stats", "foo": 1}, "GenericError", "QMP input member 'foo' is unexpected"),
    (
        {"execute": "query-stats", "exec-oob": "x"},
        "GenericError",
        "QMP input member 'exec-oob' is unexpected",
    ),
    ([], "GenericError", "QMP input must be a JSON object"),
    ("query-stats", "GenericError", "QMP input must be a JSON object"),
]


@pytest.fixture(scope="module")
def dispatcher() -> Dispatcher:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    return stats_dispatcher(registry)


@pytest.mark.parametrize(("command", "arguments", "desc"), ROWS)
def test_argument_errors(dispatcher: Dispatcher, command: str, arguments: Any, desc: str) -> None:
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    assert dispatcher.dispatch(request) == {"error": {"class": "GenericError", "desc": desc}}


@pytest.mark.parametrize(("request_", "error_class", "desc"), ENVELOPE_ROWS)
def test_request_envelope_errors(
    dispatcher: Dispatcher, request_: Any, error_class: str, desc: str
) -> None:
    assert dispatcher.dispatch(request_) == {"error": {"class": error_class, "desc": desc}}


def test_id_is_echoed_after_the_reply_whatever_its_type(dispatcher: Dispatcher) -> None:
    """QEMU 7.2 puts ``id`` before ``error`` but after ``return`` (QDict order), and stores
    an object ``id`` as a QDict, so its keys come back reordered."""
    for ident in ["abc-1", 7, None, [1, {"a": 2}], {"x": True}]:
        reply = dispatcher.dispatch(
            {"execute": "query-stats", "id": ident, "arguments": {"target": "foo"}}
        )
        assert list(reply) == ["id", "error"]
        assert reply["id"] == ident
    reply = dispatcher.dispatch({"execute": "query-statz", "id": {"b": 1, "a": [2]}})
    assert list(reply["id"]) == ["a", "b"]
    reply = dispatcher.dispatch({"id": "x", "execute": "query-stats-schemas"})
    assert list(reply) == ["return", "id"]


def test_cryptodev_target_is_accepted_when_serving_8_0() -> None:
    d = stats_dispatcher(StatsRegistry(), (8, 0))
    assert d.dispatch({"execute": "query-stats", "arguments": {"target": "cryptodev"}}) == {
        "return": []
    }
    reply = d.dispatch(
        {"execute": "query-stats", "arguments": {"target": "cryptodev", "vcpus": []}}
    )
    assert reply["error"]["desc"] == "Parameter 'vcpus' is unexpected"
