"""vmstats' own provider (``tracepoints``) on the wire: a request that names no provider
gets exactly what QEMU would send (the same bytes as a monitor without it), introspection
stays QEMU's, and a request that names it gets it, in QEMU's order (registered last, so
prepended last: first)."""

from __future__ import annotations

import json

import pytest

from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import QMPSession
from vmstats.stats import StatsRegistry
from vmstats.stats.model import StatsProvider, StatsTarget


def session(extension: bool) -> QMPSession:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    if extension:
        registry.add_stats_callbacks(FakeProvider(StatsProvider.TRACEPOINTS, vcpus=2,
                                                  targets=(StatsTarget.VCPU,)))  # fmt: skip
    machine = Machine.from_paths([vcpu_path(i) for i in range(3)])
    s = QMPSession(Monitor(registry, machine))
    assert s.receive_data(b'{"execute":"qmp_capabilities"}') == [b'{"return": {}}\r\n']
    return s


def ask(s: QMPSession, command: str, arguments: object = None) -> bytes:
    request: dict[str, object] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    (reply,) = s.receive_data(json.dumps(request).encode())
    return reply


def hmp(line: str, cpu: int | None = None) -> tuple[str, dict[str, object]]:
    arguments: dict[str, object] = {"command-line": line}
    if cpu is not None:
        arguments["cpu-index"] = cpu
    return "human-monitor-command", arguments


UNNAMED = [
    ("query-stats", {"target": "vm"}),
    ("query-stats", {"target": "vcpu"}),
    ("query-stats", {"target": "vcpu", "vcpus": [vcpu_path(1)]}),
    ("query-stats", {"target": "vcpu", "providers": [{"provider": "kvm"}]}),
    ("query-stats-schemas", None),
    ("query-stats-schemas", {"provider": "kvm"}),
    ("query-qmp-schema", None),
    hmp("info stats vcpu"),
    hmp("info stats vcpu exits", 1),
    hmp("info stats vcpu *"),
    hmp("info stats vm"),
]


@pytest.mark.parametrize(("command", "arguments"), UNNAMED)
def test_a_request_naming_no_extension_gets_qemus_bytes(command: str, arguments: object) -> None:
    assert ask(session(True), command, arguments) == ask(session(False), command, arguments)


def test_introspection_does_not_mention_it() -> None:
    assert b"tracepoints" not in ask(session(True), "query-qmp-schema")


def test_a_request_naming_it_gets_it() -> None:
    s = session(True)
    reply = json.loads(ask(s, "query-stats", {"target": "vcpu",
                                              "providers": [{"provider": "tracepoints"}]}))  # fmt: skip
    assert [(r["provider"], r["qom-path"]) for r in reply["return"]] == [
        ("tracepoints", vcpu_path(1)), ("tracepoints", vcpu_path(0))]  # fmt: skip
    both = json.loads(ask(s, "query-stats", {"target": "vcpu", "providers": [
        {"provider": "kvm", "names": ["exits"]}, {"provider": "tracepoints"}]}))  # fmt: skip
    assert [r["provider"] for r in both["return"]] == ["tracepoints"] * 2 + ["kvm"] * 3
    schemas = json.loads(ask(s, "query-stats-schemas", {"provider": "tracepoints"}))
    assert [(x["provider"], x["target"]) for x in schemas["return"]] == [("tracepoints", "vcpu")]
    text = json.loads(ask(s, *hmp("info stats vcpu * tracepoints", 1)))["return"]
    assert text.startswith("    wait_hist (log2-histogram")
    assert "provider:" not in text
    refused = json.loads(ask(session(True), *hmp("info stats vcpu * nosuch")))["return"]
    assert refused == "invalid stats provider nosuch\r\n"


def test_a_monitor_without_it_refuses_it_as_qemu_does() -> None:
    reply = json.loads(ask(session(False), "query-stats-schemas", {"provider": "tracepoints"}))
    assert reply == {"return": []}  # known to the wire, served by no provider here
    text = json.loads(ask(session(False), *hmp("info stats vcpu * tracepoints", 0)))["return"]
    assert text == ""
