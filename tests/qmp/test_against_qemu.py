"""Differential tests against a live QEMU 7.2 with KVM: same bytes in, same bytes out.

A paused QEMU's counters stay at zero, so our server replays QEMU's own data (taken from
it at start) and every reply, errors and successes alike, must be byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.qmp.replay import ReplayProvider
from vmstats.qapi.visitor import visit
from vmstats.qmp.machine import Machine, cpus_from_wire
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import QMPSession
from vmstats.stats import StatsRegistry, StatsTarget
from vmstats.stats.schema import stats_schema
from vmstats.testing.qemu import QemuVM, RawQMP, qemu_unavailable_reason

REASON = qemu_unavailable_reason()
#: Each example is a round trip to QEMU; raise it to hunt (VMSTATS_FUZZ_EXAMPLES=5000).
MAX_EXAMPLES = int(os.environ.get("VMSTATS_FUZZ_EXAMPLES", "150"))
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(REASON is not None, reason=f"no QEMU with KVM: {REASON}")]  # fmt: skip

SYNC = b'\xff\n{"execute":"qmp_capabilities","id":"sync1"}{"execute":"query-stats-schemas","arguments":{"provider":"kvm"},"id":"sync2"}'


class Twin:
    """A paused QEMU and our session holding the same data."""

    def __init__(self, vm: QemuVM) -> None:
        qmp = vm.connect()
        self.greeting = qmp.greeting

        def get(raw: bytes) -> Any:
            return json.loads(qmp.request(raw))["return"]

        schema = stats_schema()
        machine = Machine(get(b'{"execute":"query-name"}').get("name"),
                          cpus_from_wire(get(b'{"execute":"query-cpus-fast"}')))  # fmt: skip
        self.cpus = machine.qom_paths()
        version = get(b'{"execute":"query-version"}')
        provider = ReplayProvider(
            {StatsTarget.VM: visit(schema, "[StatsResult]", get(b'{"execute":"query-stats","arguments":{"target":"vm"}}')),
             StatsTarget.VCPU: visit(schema, "[StatsResult]", get(b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'))},
            visit(schema, "[StatsSchema]", get(b'{"execute":"query-stats-schemas"}')),
        )  # fmt: skip
        qmp.close()
        registry = StatsRegistry()
        registry.add_stats_callbacks(provider)
        q = version["qemu"]
        self.monitor = Monitor(registry, machine,
                               version=(q["major"], q["minor"], q["micro"]), package=version["package"])  # fmt: skip
        self.path = vm.qmp_path

    def transcript_qemu(self, data: bytes) -> list[bytes]:
        qmp = RawQMP(self.path, timeout=10)
        lines = [qmp.greeting]
        qmp.send(data + SYNC)
        while True:
            line = qmp.read_line()
            lines.append(line)
            if b'"sync2"' in line:
                break
        qmp.close()
        return lines

    def transcript_ours(self, data: bytes) -> list[bytes]:
        session = QMPSession(self.monitor)
        return [session.greeting(), *session.receive_data(data + SYNC)]


@pytest.fixture(scope="module")
def twin() -> Iterator[Twin]:
    with QemuVM(vcpus=3, paused=True) as vm:
        yield Twin(vm)


CORPUS = [
    b"",
    b'{"execute":"query-stats","arguments":{"target":"vm"}}',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}{"exec-oob":"query-stats","id":1}',
    b'{"execute":"qmp_capabilities"}{"execute":"qmp_capabilities"}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats","arguments":{"target":"vcpu"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats","arguments":{"target":"vcpu","vcpus":["/machine/unattached/device[2]","/x"],"providers":[{"provider":"kvm","names":["exits","guest_mode","halt_wait_hist"]},{"provider":"kvm","names":["blocking"]}]},"id":{"b":[1.5,null],"a":"\\u00e9"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats","arguments":{"target":"vm","providers":[]}}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats-schemas","arguments":{"provider":"kvm"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats","arguments":{"target":"vm","a":1,"b":2,"c":3,"zz":4,"q":5,"w":6,"e":7,"r":8,"t":9}}',
    b'{"execute":"qmp_capabilities"}{"execute":"query-version","id":[18446744073709551616,-0.0,1e400]}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"info stats vcpu halt_wait_hist,exits","cpu-index":2}}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"info stats vm"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"help info stats"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"cpu 2+1"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"cpu (1"}}',
    b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}',
    b'{"execute":"qmp_capabilities"}[1,{"a":}]"x"\x01{"a":"\xc3\x28"}',
    b"{'execute':'qmp_capabilities'}{'execute':'query-stats','arguments':{'target':'vcpu','vcpus':[]}}",
    b'{"execute":"qmp_capabilities"}{"execute":"query-stats","arguments":{"target":"vcpu","providers":[{"provider":"kvm","names":[1]}]}}',
    # nesting at QEMU's limit and one past it (1,024 brackets and braces together)
    b'{"execute":"qmp_capabilities"}{"execute":"query-version","id":' + b"[" * 1023 + b"1.5" + b"]" * 1023 + b"}",
    b'{"execute":"qmp_capabilities"}{"execute":"query-version","id":' + b"[" * 1024 + b"1" + b"]" * 1024 + b"}",
    b'{"execute":"qmp_capabilities"}{"execute":"query-version","id":' + b'{"a":' * 1023 + b"{}" + b"}" * 1023 + b"}",
    b'{"execute":"qmp_capabilities"}' + b"[" * 3000 + b"]" * 3000,
]  # fmt: skip


@pytest.mark.parametrize("data", CORPUS)
def test_same_bytes_as_qemu(twin: Twin, data: bytes) -> None:
    assert twin.transcript_ours(data) == twin.transcript_qemu(data)


JUNK = st.lists(
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"'", b":", b",", b"\\", b"\xff", b"1", b"-0",
                     b"e5", b"true", b"nul", b'"execute"', b'"arguments"', b'"id"', b'"exec-oob"',
                     b'"qmp_capabilities"', b'"query-stats"', b'"target"', b'"vm"', b'"vcpu"',
                     b'"vcpus"', b'"providers"', b'"provider"', b'"kvm"', b'"names"',
                     b"\xc3\xa9", b"\n", b" ", b"\\u0041"])
    | st.binary(max_size=4),
    max_size=30,
).map(b"".join)  # fmt: skip


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(junk=JUNK)
def test_random_input_gives_the_same_bytes_as_qemu(twin: Twin, junk: bytes) -> None:
    assert twin.transcript_ours(junk) == twin.transcript_qemu(junk)


def _reachable(schema: list[dict[str, object]], commands: set[str]) -> list[dict[str, object]]:
    by_name = {str(e["name"]): e for e in schema}
    todo = [n for n in by_name if n in commands]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = by_name[name]
        refs = [entry.get(k) for k in ("arg-type", "ret-type", "element-type")]
        for key in ("members", "variants"):
            refs += [m.get("type") for m in entry.get(key, [])]  # type: ignore[attr-defined]
        todo += [str(r) for r in refs if r is not None]
    return [e for e in schema if e["name"] in seen]


def test_introspection_is_qemus_for_our_commands(twin: Twin) -> None:
    qemu = RawQMP(twin.path)
    qemu.negotiate()
    theirs = json.loads(qemu.request(b'{"execute":"query-qmp-schema"}'))["return"]
    qemu.close()
    ours_raw = twin.transcript_ours(b'{"execute":"qmp_capabilities"}{"execute":"query-qmp-schema"}')
    ours = json.loads(ours_raw[2])["return"]
    commands = {str(e["name"]) for e in ours if e["meta-type"] == "command"}
    assert ours == _reachable(theirs, commands)
    assert len(ours) == 68
    assert {"query-name", "query-cpus-fast", "query-stats"} <= commands


@pytest.mark.parametrize("request_bytes", [
    b'{"execute":"query-stats","arguments":{"target":"vm"}}',
    b'{"execute":"query-stats","arguments":{"target":"vcpu"}}',
    b'{"execute":"query-stats-schemas"}',
])  # fmt: skip
def test_replay_data_is_the_live_data(twin: Twin, request_bytes: bytes) -> None:
    """Guard for the tests above: our replica answers with QEMU's live data, now, and
    that data is not empty (a QEMU without KVM stats would make every row trivial)."""
    data = b'{"execute":"qmp_capabilities"}' + request_bytes
    ours, theirs = twin.transcript_ours(data), twin.transcript_qemu(data)
    assert ours[:3] == theirs[:3]
    assert ours[0] == twin.greeting
    assert json.loads(ours[2])["return"]
    assert b'"stats": [{"name"' in ours[2]
