"""Property tests: no JSON value, as arguments or as a whole request, breaks dispatch."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.qapi import json as qjson
from vmstats.qapi.dispatch import Dispatcher
from vmstats.stats import StatsRegistry
from vmstats.stats.commands import stats_dispatcher

KEYS = st.sampled_from(
    ["target", "providers", "provider", "names", "vcpus", "execute", "arguments", "id", "x"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["vm", "vcpu", "kvm", "cryptodev", "exits", vcpu_path(0)])
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


def _dispatcher() -> Dispatcher:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    return stats_dispatcher(registry)


DISPATCHER = _dispatcher()


def _assert_well_formed(reply: Any) -> None:
    assert isinstance(reply, dict)
    assert ("return" in reply) != ("error" in reply)
    if "error" in reply:
        assert list(reply["error"]) == ["class", "desc"]
        assert reply["error"]["class"] in ("GenericError", "CommandNotFound")
        assert not reply["error"]["desc"].startswith("internal error")
    qjson.dumps(reply)  # always encodable


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(arguments=JSON, command=st.sampled_from(["query-stats", "query-stats-schemas"]))
def test_any_arguments_give_a_result_or_a_qemu_error(arguments: Any, command: str) -> None:
    reply = DISPATCHER.dispatch({"execute": command, "arguments": arguments})
    _assert_well_formed(reply)
    if not isinstance(arguments, dict):
        assert reply["error"]["desc"] == "QMP input member 'arguments' must be an object"


@settings(max_examples=300)
@given(
    target=st.sampled_from(["vm", "vcpu"]),
    providers=st.none()
    | st.lists(
        st.fixed_dictionaries(
            {"provider": st.just("kvm")},
            optional={"names": st.lists(st.sampled_from(["exits", "busy", "wait_hist", "zz"]))},
        ),
        max_size=3,
    ),
    vcpus=st.none() | st.lists(st.sampled_from([vcpu_path(i) for i in range(4)])),
)
def test_valid_filters_always_succeed(target: str, providers: Any, vcpus: Any) -> None:
    arguments: dict[str, Any] = {"target": target}
    if providers is not None:
        arguments["providers"] = providers
    if vcpus is not None and target == "vcpu":
        arguments["vcpus"] = vcpus
    reply = DISPATCHER.dispatch({"execute": "query-stats", "arguments": arguments})
    assert "return" in reply
    for result in reply["return"]:
        assert result["stats"], "an object left with no stat must be omitted"
        if vcpus is not None and target == "vcpu":
            assert result["qom-path"] in vcpus


@settings(max_examples=300)
@given(request=JSON)
def test_any_request_object_is_answered(request: Any) -> None:
    _assert_well_formed(DISPATCHER.dispatch(request))
