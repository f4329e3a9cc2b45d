"""The one reader: a reading's natural order and its memo, and QmpReader against servers
that lack a command, refuse one, or are too old (fake peers speaking QMP)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.qmp.test_cli_clients import EXITS_SCHEMA, FakePeer
from tests.stats.provider import FakeProvider
from vmstats.errors import ClientError
from vmstats.qmp.machine import Machine
from vmstats.qmp.monitor import Monitor
from vmstats.reader.reading import (
    QmpReader,
    RegistryReader,
    VmReading,
    read_all,
    socket_addresses,
)
from vmstats.reader.sample import SampleMemo, sample_of, take_sample
from vmstats.serve.reader import MonitorReader
from vmstats.stats.model import StatsProvider, StatsResult, StatsTarget
from vmstats.stats.registry import StatsRegistry
from vmstats.testing.hostile import DemoServer

VCPU_STATS = json.dumps([
    {"provider": "kvm", "qom-path": "/machine/unattached/device[2]",
     "stats": [{"name": "hist", "value": [3, 2, 1]}, {"name": "exits", "value": 7}]},
    {"provider": "kvm", "qom-path": "/machine/unattached/device[0]",
     "stats": [{"name": "hist", "value": [0, 0, 9]}, {"name": "exits", "value": 5}]},
])  # fmt: skip


def test_a_server_without_cpus_fast_or_name_is_read_in_natural_order(tmp_path: Path) -> None:
    """No query-cpus-fast, no query-name (CommandNotFound): vCPUs are numbered in the
    order their stats come (QEMU prepends: the last one on the wire is vCPU 0), and the
    VM is named after its socket; buckets lowest first, stats in provider order."""
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]"}  # fmt: skip
    with FakePeer(tmp_path / "old.qmp", answers, missing={"query-cpus-fast", "query-name"}):
        reading = asyncio.run(QmpReader(str(tmp_path / "old.qmp"), timeout=5).read())
    assert reading.name == "old"
    assert reading.cpus() == ["/machine/unattached/device[0]", "/machine/unattached/device[2]"]
    assert reading.sample.values[("kvm", "vcpu", "/machine/unattached/device[2]")] == {
        "exits": 7, "hist": [1, 2, 3]}  # fmt: skip
    assert list(reading.sample.values[("kvm", "vcpu", "/machine/unattached/device[0]")]) == [
        "exits", "hist"]  # fmt: skip
    assert reading.info["qemu_version"] == "7.2.0"


def test_qemu_before_7_1_is_named_as_such(tmp_path: Path) -> None:
    old = FakePeer(tmp_path / "q.qmp", {}, version="6.2.0",
                   missing={"query-stats", "query-stats-schemas"})  # fmt: skip
    reader = QmpReader(str(tmp_path / "q.qmp"), timeout=5)
    with old, pytest.raises(ClientError, match=r"QEMU 6\.2\.0 .* has no query-stats: it needs"):
        asyncio.run(reader.read())


def test_schemas_and_vcpus_are_decoded_again_only_when_their_bytes_change(tmp_path: Path) -> None:
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]", "query-name": '{"name": "web1"}'}  # fmt: skip
    with FakePeer(tmp_path / "a.qmp", answers, missing={"query-cpus-fast"}):
        reader = QmpReader(str(tmp_path / "a.qmp"), timeout=5)
        first, second = asyncio.run(reader.read()), asyncio.run(reader.read())
        answers["query-stats-schemas"] = "[]"
        third = asyncio.run(reader.read())
    assert first.name == second.name == "web1"
    assert second.schemas is first.schemas  # kept: consumers keep what they made of them
    assert third.schemas == []
    assert third.schemas is not first.schemas


def test_the_memo_keeps_unchanged_objects_the_same_objects() -> None:
    """A provider that gives the very same stats object gets the very same values back:
    the exposition then knows by identity that nothing moved."""
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider(vcpus=2))
    memo = SampleMemo()
    one, two = take_sample(registry, memo), take_sample(registry, memo)
    for key, values in one.values.items():
        assert two.values[key] == values
    # The fake provider makes new stats lists each call: nothing may be shared wrongly.
    assert all(two.values[k] is not v for k, v in one.values.items())
    stats = [("exits", 1)]
    result = StatsResult(StatsProvider.KVM, stats, "/cpu0")
    a = sample_of(0.0, {StatsTarget.VCPU: [result]}, memo)
    b = sample_of(1.0, {StatsTarget.VCPU: [StatsResult(StatsProvider.KVM, stats, "/cpu0")]}, memo)
    c = sample_of(2.0, {StatsTarget.VCPU: [StatsResult(StatsProvider.KVM, [("exits", 2)], "/cpu0")]},
                  memo)  # fmt: skip
    key = ("kvm", "vcpu", "/cpu0")
    assert b.values[key] is a.values[key]
    assert c.values[key] == {"exits": 2}


def test_a_sample_of_the_very_results_of_last_time_is_the_very_values() -> None:
    """A VM standing still (every result the one its provider kept): the values are the
    mapping of last time, and the exposition skips the VM whole by that; one result
    anew, and they are made again."""
    results = [StatsResult(StatsProvider.KVM, [("exits", 1)], f"/cpu{i}") for i in range(2)]
    memo = SampleMemo()
    first = sample_of(0.0, {StatsTarget.VCPU: results}, memo)
    again = sample_of(1.0, {StatsTarget.VCPU: list(results)}, memo)
    assert again.values is first.values
    assert again.taken == 1.0  # a new moment all the same: rates need it
    moved = [results[0], StatsResult(StatsProvider.KVM, [("exits", 2)], "/cpu1")]
    third = sample_of(2.0, {StatsTarget.VCPU: moved}, memo)
    assert third.values is not first.values
    assert third.values[("kvm", "vcpu", "/cpu1")] == {"exits": 2}
    assert third.values[("kvm", "vcpu", "/cpu0")] is first.values[("kvm", "vcpu", "/cpu0")]
    fewer = sample_of(3.0, {StatsTarget.VCPU: moved[:1]}, memo)
    assert list(fewer.values) == [("kvm", "vcpu", "/cpu0")]


def test_registry_reader_reads_the_demo_shape() -> None:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider(vcpus=2))
    reading = asyncio.run(RegistryReader("demo", registry, ["/a", "/b"]).read())
    assert reading.vcpus == {"/a": 0, "/b": 1}
    assert reading.schemas == registry.query_stats_schemas()


def test_socket_addresses_take_directories_sockets_and_tcp(tmp_path: Path) -> None:
    (tmp_path / "b.qmp").touch()
    (tmp_path / "a.qmp").touch()
    (tmp_path / "notes.txt").touch()
    got = socket_addresses([str(tmp_path), "127.0.0.1:4444", str(tmp_path / "a.qmp")])
    assert got == [str(tmp_path / "a.qmp"), str(tmp_path / "b.qmp"), "127.0.0.1:4444"]


def test_one_socket_named_twice_is_one_vm(tmp_path: Path) -> None:
    """Its path and a link to it, its directory and itself, ./ spellings: one socket, under
    the first name it was given (the exporter labelled it web1 and web1-2)."""
    (tmp_path / "web1.qmp").touch()
    (tmp_path / "alias.sock").symlink_to(tmp_path / "web1.qmp")
    got = socket_addresses([str(tmp_path / "web1.qmp"), str(tmp_path / "alias.sock"),
                            f"{tmp_path}/./web1.qmp", str(tmp_path)])  # fmt: skip
    assert got == [str(tmp_path / "web1.qmp")]


@pytest.mark.kvm
@requires_kvm
def test_through_our_own_socket_the_pid_is_the_vmms() -> None:
    """The demo's socket is served by its parent process, as the daemon's sockets are by
    the daemon: the VM's pid is the process that runs its vCPU threads."""
    with DemoServer(vcpus=2, rate=0.001) as demo:
        reading = asyncio.run(QmpReader(str(demo.path), timeout=5).read())
    assert reading.info["pid"] == str(demo.vm_pid)
    assert demo.vm_pid != demo.pid


def test_a_refused_negotiation_is_said_as_such_not_as_an_old_qemu(tmp_path: Path) -> None:
    """A server that refuses qmp_capabilities refuses every command after it: the reader
    says the first refusal, not that the server is too old for query-stats."""
    refusing = FakePeer(tmp_path / "r.qmp", {}, missing={"qmp_capabilities", "query-stats",
                                                         "query-stats-schemas"})  # fmt: skip
    reader = QmpReader(str(tmp_path / "r.qmp"), timeout=5)
    with refusing, pytest.raises(ClientError, match=r"^qmp_capabilities: CommandNotFound"):
        asyncio.run(reader.read())


THREE_VCPUS = json.dumps([
    {"provider": "kvm", "qom-path": f"/machine/unattached/device[{n}]",
     "stats": [{"name": "hist", "value": [0, 0, 1]}, {"name": "exits", "value": n}]}
    for n in (3, 2, 0)
])  # fmt: skip


def test_our_own_socket_is_read_on_one_kept_connection_and_a_qemus_is_let_go(
    tmp_path: Path,
) -> None:
    """vmstats' sockets serve many clients: a reader keeps its connection (a read is
    the stats alone), asks schemas and vCPUs again when the vCPUs change, and connects
    anew when the server hangs up.  A QEMU's monitor is let go after every read."""
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]", "query-name": '{"name": "web1"}'}  # fmt: skip

    async def reads(reader: QmpReader, count: int) -> list[VmReading]:
        return [await reader.read() for _ in range(count)]

    ours = FakePeer(tmp_path / "ours.qmp", answers, missing={"query-cpus-fast"},
                    package="vmstats 0.1")  # fmt: skip
    with ours:
        reader = QmpReader(str(tmp_path / "ours.qmp"), timeout=5)

        async def session() -> list[VmReading]:
            first = await reads(reader, 3)
            answers["query-stats vcpu"] = THREE_VCPUS  # a vCPU plugged
            plugged = await reader.read()
            ours.hang_up()  # the daemon restarted: the next read connects anew
            return [*first, plugged, await reader.read()]

        readings = asyncio.run(session())
        reader.close()
    assert [r.name for r in readings] == ["web1"] * 5
    assert ours.connections == 2  # one for four reads, one after the hang-up
    assert len(readings[0].cpus()) == 2
    assert readings[3].cpus() == [f"/machine/unattached/device[{n}]" for n in (0, 2, 3)]
    assert readings[3].sample.values[("kvm", "vcpu", "/machine/unattached/device[3]")] == {
        "exits": 3, "hist": [1, 0, 0]}  # fmt: skip
    assert readings[2].sample.values is readings[1].sample.values  # the same bytes
    assert readings[2].sample.taken > readings[1].sample.taken

    qemu = FakePeer(tmp_path / "qemu.qmp", answers, missing={"query-cpus-fast"})
    with qemu:
        asyncio.run(reads(QmpReader(str(tmp_path / "qemu.qmp"), timeout=5), 3))
    assert qemu.connections == 3


def test_a_refresh_reads_our_sockets_together_and_waits_no_longer_than_the_timeout(
    tmp_path: Path,
) -> None:
    """``read_all`` (a refresh of top, a scrape): the kept connections' requests are
    written at once and their replies awaited together; a server that stops answering
    fails as busy within the timeout while the others are read; events between replies
    (a terse server's) are skipped; a QEMU is read on a connection of its own."""
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]", "query-name": '{"name": "web1"}'}  # fmt: skip
    hung = FakePeer(tmp_path / "hung.qmp", answers, missing={"query-cpus-fast"},
                    package="vmstats 0.1")  # fmt: skip
    terse = FakePeer(tmp_path / "terse.qmp", answers, missing={"query-cpus-fast"},
                     package="vmstats 0.1", terse=True)  # fmt: skip
    qemu = FakePeer(tmp_path / "qemu.qmp", answers, missing={"query-cpus-fast"})
    with hung, terse, qemu:
        readers = [QmpReader(str(p.path), timeout=0.5) for p in (hung, terse, qemu)]

        async def session() -> list[list[VmReading | BaseException]]:
            async with asyncio.timeout(30):  # a hang is a failure, not a stuck suite
                rounds = [await read_all(readers), await read_all(readers)]
                hung.silent = True
                rounds.append(await read_all(readers))
                return rounds

        rounds = asyncio.run(session())
        for reader in readers:
            reader.close()
    for found in rounds[:2]:
        assert [r.name for r in found if isinstance(r, VmReading)] == ["web1"] * 3
    stuck, *fine = rounds[2]
    assert isinstance(stuck, ClientError)
    assert "no answer from" in str(stuck)
    assert hung.connections == 1  # said once: not waited for again on a new connection
    assert all(isinstance(r, VmReading) and len(r.cpus()) == 2 for r in fine)
    assert terse.connections == 1  # kept: its events skipped
    assert qemu.connections == 3  # let go after every read


def test_a_kept_connection_that_stops_answering_is_said_once_per_read(tmp_path: Path) -> None:
    """One read of a vmstats socket that went silent: no answer in time is the error,
    and the reader does not wait as long again on a new connection."""
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]", "query-name": '{"name": "web1"}'}  # fmt: skip
    hung = FakePeer(tmp_path / "hung.qmp", answers, missing={"query-cpus-fast"},
                    package="vmstats 0.1")  # fmt: skip
    with hung:
        reader = QmpReader(str(hung.path), timeout=0.5)

        async def session() -> None:
            async with asyncio.timeout(30):
                await reader.read()  # the connection is kept from now on
                hung.silent = True
                with pytest.raises(ClientError, match=r"^no answer from"):
                    await reader.read()

        asyncio.run(session())
        reader.close()
    assert hung.connections == 1


TRACEPOINTS_SCHEMA = json.dumps([{"provider": "tracepoints", "target": "vcpu", "stats": [
    {"name": "kvm_userspace_exit(IO)", "type": "cumulative", "exponent": 0}]}])  # fmt: skip
EXITS_STATS = json.dumps([{"provider": "tracepoints", "qom-path": f"/machine/unattached/device[{n}]",
                           "stats": [{"name": "kvm_userspace_exit(IO)", "value": 10 + n}]}
                          for n in (2, 0)])  # fmt: skip


@pytest.mark.parametrize("counted", [True, False])
def test_exit_reasons_are_asked_by_name_of_our_sockets_that_count_them(
    tmp_path: Path, counted: bool
) -> None:
    """A vmstats socket's ``tracepoints`` (vmstats' extension) are read by name, with the
    rest, in one reading; where the server has no such schema (no privileges), a kept
    connection's read does not ask for them; a QEMU is never asked."""
    answers = {"query-stats-schemas": EXITS_SCHEMA, "query-stats vcpu": VCPU_STATS,
               "query-stats vm": "[]", "query-name": '{"name": "web1"}',
               "query-stats-schemas tracepoints": TRACEPOINTS_SCHEMA if counted else "[]",
               "query-stats tracepoints": EXITS_STATS if counted else "[]",
               "query-stats kvm": VCPU_STATS}  # fmt: skip
    ours = FakePeer(tmp_path / "ours.qmp", answers, missing={"query-cpus-fast"},
                    package="vmstats 0.1")  # fmt: skip
    with ours:
        reader = QmpReader(str(tmp_path / "ours.qmp"), timeout=5)

        async def two() -> list[VmReading]:
            return [await reader.read(), await reader.read()]

        first, second = asyncio.run(two())
        reader.close()
    kept = ours.asked[ours.asked.index("query-stats vcpu") + 1 :]
    key = ("tracepoints", "vcpu", "/machine/unattached/device[0]")
    if counted:
        assert second.sample.values[key] == {"kvm_userspace_exit(IO)": 10}
        assert [s.provider for s in second.schemas] == [StatsProvider.TRACEPOINTS,
                                                       StatsProvider.KVM]  # fmt: skip
        assert second.schemas is first.schemas  # the same list while the parts stand
        assert kept[kept.index("query-stats vm") :] == [
            "query-stats vm",
            "query-stats vcpu kvm+tracepoints",
        ]  # one request, two providers
    else:
        assert key not in second.sample.values
        assert "query-stats vcpu tracepoints" not in kept[kept.index("query-stats vm") :]
    qemu = FakePeer(tmp_path / "qemu.qmp", answers, missing={"query-cpus-fast"})
    with qemu:
        asyncio.run(QmpReader(str(tmp_path / "qemu.qmp"), timeout=5).read())
    assert not any("tracepoints" in asked for asked in qemu.asked)


@pytest.mark.parametrize("reader", ["registry", "monitor"])
def test_in_process_readers_read_vmstats_own_providers_too(reader: str) -> None:
    """The demo's view (RegistryReader) and the daemon's /metrics (MonitorReader) read a
    VM in this process: vmstats' own providers, which answer only requests that name
    them, are in the reading beside QEMU's, schemas and values, the kvm ones first."""
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider(vcpus=2))
    registry.add_stats_callbacks(FakeProvider(StatsProvider.TRACEPOINTS, vcpus=2,
                                              targets=(StatsTarget.VCPU,)))  # fmt: skip
    paths = [f"/machine/unattached/device[{n}]" for n in (0, 1)]
    if reader == "registry":
        source: RegistryReader | MonitorReader = RegistryReader("demo", registry, paths)
    else:
        source = MonitorReader("demo", Monitor(registry, Machine.from_paths(paths)), dict)
    reading = asyncio.run(source.read())
    schemas = [(s.provider, s.target) for s in reversed(reading.schemas)]  # natural order
    assert schemas == [(StatsProvider.KVM, StatsTarget.VM), (StatsProvider.KVM, StatsTarget.VCPU),
                       (StatsProvider.TRACEPOINTS, StatsTarget.VCPU)]  # fmt: skip
    assert reading.sample.values[("tracepoints", "vcpu", paths[1])]["exits"] == 1001
    assert reading.sample.values[("kvm", "vcpu", paths[1])]["exits"] == 1001
