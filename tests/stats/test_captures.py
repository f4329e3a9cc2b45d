"""Every stats reply QEMU 7.2 gave parses into the model and encodes back to QEMU's bytes.

Stronger than "same JSON": key order and escaping included.  Error replies are reproduced
by sending the capture's request through our dispatcher.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import CAPTURES
from vmstats.qapi import json as qjson
from vmstats.qapi.output import OutputEncoder
from vmstats.qapi.qdict import qdict
from vmstats.qapi.visitor import visit
from vmstats.stats import StatsRegistry, StatsResult, StatsSchema
from vmstats.stats.commands import stats_dispatcher
from vmstats.stats.schema import stats_schema


def _requests() -> dict[str, str]:
    """capture file -> request sent, from the captures' README table."""
    table = (CAPTURES / "README.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \| \w+ \| `([^`]+)` \|", table, re.M))


def _is_error(capture: str) -> bool:
    """Captures numbered 60 and up are error replies."""
    return capture[:2].isdigit() and int(capture[:2]) >= 60


REQUESTS = _requests()
STATS_REPLIES = {
    name: "[StatsResult]" if '"query-stats"' in request else "[StatsSchema]"
    for name, request in REQUESTS.items()
    if '"query-stats' in request and not _is_error(name)
}
ERROR_REPLIES = [name for name in REQUESTS if _is_error(name)]


def test_the_tables_found_the_captures() -> None:
    assert len(STATS_REPLIES) == 9
    assert len(ERROR_REPLIES) == 6


@pytest.mark.parametrize(("capture", "type_name"), sorted(STATS_REPLIES.items()))
def test_stats_reply_round_trips_through_the_model(capture: str, type_name: str) -> None:
    raw = (CAPTURES / capture).read_bytes()
    reply = json.loads(raw)
    schema = stats_schema()
    model = visit(schema, type_name, reply["return"])
    expected_class = StatsResult if type_name == "[StatsResult]" else StatsSchema
    assert model
    assert all(isinstance(item, expected_class) for item in model)
    response: dict[str, object] = {"return": OutputEncoder(schema).encode(type_name, model)}
    if "id" in reply:
        response["id"] = reply["id"]
    assert (qjson.dumps(qdict(response)) + "\r\n").encode() == raw


def test_vcpu_capture_has_qemus_shapes() -> None:
    """Spot checks on the decoded model: booleans, reversed histograms, paths."""
    reply = json.loads((CAPTURES / "b02-query-stats-vcpu.json").read_bytes())
    results = visit(stats_schema(), "[StatsResult]", reply["return"])
    first = results[0]
    values = dict(first.stats)
    assert first.qom_path == "/machine/unattached/device[4]"
    assert values["guest_mode"] is False
    assert isinstance(values["halt_wait_hist"], list)
    assert len(values["halt_wait_hist"]) == 32
    assert [r.qom_path for r in results][-1] == "/machine/unattached/device[0]"


@pytest.mark.parametrize("capture", sorted(ERROR_REPLIES))
def test_error_reply_is_reproduced_byte_for_byte(capture: str) -> None:
    dispatcher = stats_dispatcher(StatsRegistry())
    request = json.loads(REQUESTS[capture])
    ours = (qjson.dumps(dispatcher.dispatch(request)) + "\r\n").encode()
    assert ours == Path(CAPTURES / capture).read_bytes()


@pytest.mark.parametrize(("capture", "type_name"), [
    ("04-query-version.json", "VersionInfo"),
    ("02-qmp_capabilities.json", None),
])  # fmt: skip
def test_control_replies_round_trip_through_the_model(capture: str, type_name: str | None) -> None:
    from vmstats.qmp.monitor import Monitor

    schema = Monitor(StatsRegistry()).schema
    raw = (CAPTURES / capture).read_bytes()
    value = json.loads(raw)["return"]
    encoded = (
        OutputEncoder(schema).encode(type_name, visit(schema, type_name, value))
        if type_name
        else {}
    )
    assert (qjson.dumps({"return": encoded}) + "\r\n").encode() == raw


def test_query_commands_capture_decodes_as_command_info() -> None:
    from vmstats.qmp.monitor import Monitor

    schema = Monitor(StatsRegistry()).schema
    raw = (CAPTURES / "05-query-commands.json").read_bytes()
    commands = visit(schema, "[CommandInfo]", json.loads(raw)["return"])
    encoded = OutputEncoder(schema).encode("[CommandInfo]", commands)
    assert (qjson.dumps({"return": encoded}) + "\r\n").encode() == raw
    assert {"query-stats", "query-stats-schemas"} <= {c["name"] for c in commands}
