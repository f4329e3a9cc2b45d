"""The QMP session without sockets: negotiation, id echo, errors; fuzzed byte streams."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stats.provider import FakeProvider
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import QMPSession
from vmstats.stats import StatsRegistry


def session(negotiate: bool = True) -> QMPSession:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    s = QMPSession(Monitor(registry, Machine.from_paths(["/machine/unattached/device[0]"])))
    if negotiate:
        assert s.receive_data(b'{"execute":"qmp_capabilities"}') == [b'{"return": {}}\r\n']
    return s


NOT_NEGOTIATED = (
    b'{"error": {"class": "CommandNotFound", '
    b'"desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}\r\n'
)

ROWS = [
    # (negotiated?, request bytes, reply bytes) -- replies as QEMU 7.2 sends them
    (False, b'{"execute":"query-stats","arguments":{"target":"vm"}}', NOT_NEGOTIATED),
    (False, b'{"execute":"nope"}', NOT_NEGOTIATED),
    (False, b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}',
     b'{"error": {"class": "GenericError", "desc": "Parameter \'null\' does not accept value \'foo\'"}}\r\n'),
    (False, b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
     b'{"error": {"class": "GenericError", "desc": "Invalid parameter type for \'enable\', expected: array"}}\r\n'),
    (False, b'{"execute":"qmp_capabilities","id":1}', b'{"return": {}, "id": 1}\r\n'),
    (True, b'{"execute":"qmp_capabilities"}',
     b'{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}\r\n'),
    (True, b'{"exec-oob":"query-version","id":2}',
     b'{"id": 2, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' is unexpected"}}\r\n'),
    (True, b'{"execute":"query-statz"}',
     b'{"error": {"class": "CommandNotFound", "desc": "The command query-statz has not been found"}}\r\n'),
    (True, b'{"execute":"query-version","id":0.1}',
     b'{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "vmstats 0.1.0"}, "id": 0.10000000000000001}\r\n'),
    (True, b'{"execute":"query-version","id":1e400}',
     b'{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "vmstats 0.1.0"}, "id": inf}\r\n'),
    (True, b'{"execute":"query-version","id":"\\u0000\xc3\xa9"}',
     b'{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "vmstats 0.1.0"}, "id": "\\u0000\\u00E9"}\r\n'),
    (True, b'[]', b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}\r\n'),
    (True, b'{"a":1,"a":2}', b'{"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}\r\n'),
    (True, b'\xff', b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'),
    (True, b'{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}',
     b'{"return": "7.2.0vmstats 0.1.0\\r\\n"}\r\n'),
    (True, b'{"execute": "human-monitor-command", "arguments": {"command-line": "x", "cpu-index": 7}}',
     b'{"error": {"class": "GenericError", "desc": "Parameter \'cpu-index\' expects a CPU number"}}\r\n'),
]  # fmt: skip


def test_greeting_has_qemus_form() -> None:
    assert session(negotiate=False).greeting() == (
        b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
        b'"package": "vmstats 0.1.0"}, "capabilities": ["oob"]}}\r\n'
    )


def test_replies_match_qemu() -> None:
    for negotiated, request, reply in ROWS:
        assert session(negotiated).receive_data(request) == [reply], request


def test_oob_after_negotiating_it() -> None:
    s = session(negotiate=False)
    assert s.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}') == [
        b'{"return": {}}\r\n'
    ]
    assert s.receive_data(b'{"exec-oob":"query-stats","arguments":{"target":"vm"},"id":4}') == [
        b'{"id": 4, "error": {"class": "GenericError", '
        b'"desc": "The command query-stats does not support OOB"}}\r\n'
    ]
    assert s.receive_data(b'{"exec-oob":"query-version","execute":"query-version"}') == [
        b'{"error": {"class": "GenericError", '
        b"\"desc\": \"QMP input member 'execute' clashes with 'exec-oob'\"}}\r\n"
    ]


def test_requests_split_and_glued_in_any_way() -> None:
    stream = b'{"execute":"query-version","id":1}{"execute":"query-stats","arguments":{"target":"vm"},"id":2}'
    whole = session().receive_data(stream)
    s = session()
    pieces = [r for i in range(0, len(stream), 7) for r in s.receive_data(stream[i : i + 7])]
    assert pieces == whole
    assert len(whole) == 2
    assert json.loads(whole[1])["id"] == 2


def test_query_commands_and_schema_are_served() -> None:
    s = session()
    names = [
        c["name"] for c in json.loads(s.receive_data(b'{"execute":"query-commands"}')[0])["return"]
    ]
    assert names == [
        "query-stats-schemas",
        "query-stats",
        "human-monitor-command",
        "query-name",
        "query-cpus-fast",
        "query-qmp-schema",
        "query-commands",
        "query-version",
        "qmp_capabilities",
    ]
    schema = json.loads(s.receive_data(b'{"execute":"query-qmp-schema"}')[0])["return"]
    assert [e["name"] for e in schema if e["meta-type"] == "command"][-2:] == [
        "query-stats",
        "query-stats-schemas",
    ]


def test_query_name_and_cpus_fast_describe_the_machine() -> None:
    machine = Machine.pc([(0, "/machine/unattached/device[0]", 41),
                          (1, "/machine/unattached/device[2]", 42)])  # fmt: skip
    s = QMPSession(Monitor(StatsRegistry(), machine))
    s.receive_data(b'{"execute":"qmp_capabilities"}')
    assert s.receive_data(b'{"execute":"query-name"}') == [b'{"return": {}}\r\n']
    machine.name = "web1"
    assert s.receive_data(b'{"execute":"query-name"}') == [b'{"return": {"name": "web1"}}\r\n']
    # QEMU 7.2's key order and topology (tests/qmp/test_against_qemu.py checks it live)
    assert s.receive_data(b'{"execute":"query-cpus-fast"}') == [
        b'{"return": [{"thread-id": 41, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, '
        b'"qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}, '
        b'{"thread-id": 42, "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, '
        b'"qom-path": "/machine/unattached/device[2]", "cpu-index": 1, "target": "x86_64"}]}\r\n'
    ]


JUNK = st.lists(
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"'", b":", b",", b"\\", b"\xff", b"\x00",
                     b"1", b"-", b"e", b"true", b"nul", b' "execute"', b'"arguments"',
                     b'"query-stats"', b'"target"', b'"vm"', b"\xc3", b"\n", b"%"])
    | st.binary(max_size=8),
    max_size=40,
).map(b"".join)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(junk=JUNK, negotiate=st.booleans())
def test_any_bytes_are_answered_and_the_session_stays_usable(junk: bytes, negotiate: bool) -> None:
    s = session(negotiate)
    replies = s.receive_data(junk)
    for reply in replies:
        assert reply.endswith(b"\r\n")
        message = json.loads(reply)
        assert ("return" in message) != ("error" in message)
    # QEMU's documented resynchronisation: 0xFF then a newline resets the lexer.
    replies = s.receive_data(
        b'\xff\n{"execute":"qmp_capabilities"}{"execute":"query-version","id":"sync"}'
    )
    last = json.loads(replies[-1])
    assert last["id"] == "sync"
    assert "return" in last
