"""``vmstats query/schemas/info`` against real QEMU 7.2 and against ``vmstats demo``.

Both answer for the same kernel, so the schemas must be identical and query replies must
have the same stat names, order and value shapes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.qmp.jsonstream import JSONStreamParser
from vmstats.testing.qemu import QemuVM, qemu_unavailable_reason

QEMU_REASON = qemu_unavailable_reason()
requires_qemu = pytest.mark.skipif(QEMU_REASON is not None, reason=f"no QEMU: {QEMU_REASON}")


def vmstats(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmstats", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def demo_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("demo") / "qmp.sock"
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "demo", "--headless", "--vcpus",
                             "2", "--qmp", str(path)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("vmstats demo: ready: 2 vCPUs"), line
    yield path
    proc.terminate()
    assert proc.wait(10) == 0
    assert not path.exists(), "the demo removes its socket"


@pytest.fixture(scope="module")
def qemu_socket() -> Iterator[Path]:
    with QemuVM(vcpus=2) as vm:
        yield vm.qmp_path


def shapes(reply: list[dict[str, Any]]) -> list[tuple[object, ...]]:
    def shape(v: object) -> object:
        return ("list", len(v)) if isinstance(v, list) else type(v).__name__

    return [
        (r.get("qom-path"), tuple((s["name"], shape(s["value"])) for s in r["stats"]))
        for r in reply
    ]


@pytest.mark.kvm
@pytest.mark.qemu
@requires_kvm
@requires_qemu
def test_same_schemas_from_qemu_and_demo(demo_socket: Path, qemu_socket: Path) -> None:
    ours = vmstats("schemas", str(demo_socket), "--json")
    theirs = vmstats("schemas", str(qemu_socket), "--json")
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout  # byte for byte: same kernel, same wire
    assert json.loads(ours.stdout)[0]["target"] == "vcpu"


@pytest.mark.kvm
@pytest.mark.qemu
@requires_kvm
@requires_qemu
@pytest.mark.parametrize("args", [
    ["--target", "vcpu"],
    ["--target", "vm"],
    ["--target", "vcpu", "--names", "exits, halt_wait_hist,guest_mode"],
    ["--target", "vcpu", "--vcpus", "1"],
    ["--target", "vcpu", "--vcpus", "/machine/unattached/device[2]"],
    ["--target", "vm", "--provider", "kvm", "--names", "pages_4k"],
])  # fmt: skip
def test_same_stat_names_types_and_shapes(demo_socket: Path, qemu_socket: Path,
                                          args: list[str]) -> None:  # fmt: skip
    ours = vmstats("query", str(demo_socket), *args, "--json")
    theirs = vmstats("query", str(qemu_socket), *args, "--json")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert shapes(json.loads(ours.stdout)) == shapes(json.loads(theirs.stdout))


@pytest.mark.kvm
@requires_kvm
def test_human_output_of_the_demo(demo_socket: Path) -> None:
    out = vmstats("query", str(demo_socket), "--target", "vcpu", "--names",
                  "halt_exits,halt_wait_ns,blocking,halt_wait_hist")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("device[0]") < text.index("device[2]")  # natural order for people
    # nanoseconds shown as time with a unit, in the value column
    assert re.search(r"\n  halt_wait_ns +cumulative +[0-9.]+ (s|ms|us|ns)\n", text), text
    assert "samples" in text  # histograms summarised
    info = vmstats("info", str(demo_socket), "vcpu", "halt_exits")
    assert info.stdout.startswith("provider: kvm\n    halt_exits (cumulative): ")


@pytest.mark.kvm
@requires_kvm
@pytest.mark.parametrize(("args", "message"), [
    (["query", "--target", "vcpu", "--names", "exits,nope,bogus"],
     "unknown stat names for target vcpu: nope, bogus"),
    (["query", "--target", "cryptodev"], "unknown target 'cryptodev': this server offers vcpu, vm"),
    (["query", "--target", "vm", "--provider", "nope"], "unknown provider 'nope'"),
    (["query", "--target", "vcpu", "--vcpus", "7"], "no vCPU '7': this VM has vCPUs 0 to 1"),
    (["schemas", "--provider", "cryptodev"], "unknown provider 'cryptodev'"),
])  # fmt: skip
def test_what_the_server_does_not_serve_is_a_usage_error(demo_socket: Path, args: list[str],
                                                         message: str) -> None:  # fmt: skip
    out = vmstats(args[0], str(demo_socket), *args[1:])
    assert (out.returncode, out.stdout) == (2, "")
    assert message in out.stderr


@pytest.mark.kvm
@requires_kvm
def test_hmp_refusal_is_an_error(demo_socket: Path) -> None:
    out = vmstats("info", str(demo_socket), "bogus")
    assert out.returncode == 1
    assert out.stdout == "invalid stats target bogus\n"


@pytest.mark.kvm
@requires_kvm
@pytest.mark.parametrize(("args", "code", "message"), [
    (["vcpu", "nope"], 2, "vmstats: unknown stat name for target vcpu: nope (vmstats "
                          "schemas SOCKET lists them)\n"),
    (["vcpu", "kvm"], 2, "a provider goes third, after the names: info SOCKET vcpu '*' "
                         "PROVIDER\n"),
    (["vcpu", ","], 0, "vmstats: no statistics matched 'info stats vcpu ,'\n"),
])  # fmt: skip
def test_an_empty_info_says_why(demo_socket: Path, args: list[str], code: int,
                                message: str) -> None:  # fmt: skip
    """QEMU's HMP prints nothing for stats it does not have: stdout stays as QEMU's (empty),
    and stderr says why."""
    out = vmstats("info", str(demo_socket), *args)
    assert (out.returncode, out.stdout) == (code, "")
    assert out.stderr.endswith(message), out.stderr


def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    out = vmstats("query", str(tmp_path / "nope.sock"), "--target", "vm")
    assert out.returncode == 1
    assert "cannot connect to QMP at" in out.stderr
    assert "No such file" in out.stderr
    out = vmstats("query", "127.0.0.1:1", "--target", "vm")
    assert out.returncode == 1
    assert out.stderr == "vmstats: cannot connect to QMP at 127.0.0.1:1: Connection refused\n"


class FakePeer:
    """A QMP peer in a thread that greets as ``version`` and answers each command with
    the text ``answers`` give for it (``query-stats`` by target), else ``{}``: a QEMU
    that is old, or that sends what no QEMU sends."""

    def __init__(self, path: Path, answers: dict[str, str], version: str = "7.2.0",
                 terse: bool = False, missing: frozenset[str] | set[str] = frozenset(),
                 package: str = "") -> None:  # fmt: skip
        """``missing``: commands answered with QEMU's CommandNotFound; ``package``: the
        greeting's (``vmstats ...`` for one of our servers)."""
        self.path = path
        self.connections = 0  # made so far
        self.silent = False  # True: requests are read and never answered (a hung server)
        self.asked: list[str] = []  # each command, with its target and provider
        self._writers: list[asyncio.StreamWriter] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.answers = answers
        self.terse = terse
        self.missing = missing
        major, minor, micro = version.split(".")
        self.greeting = (f'{{"QMP": {{"version": {{"qemu": {{"micro": {micro}, "minor": {minor}, '
                         f'"major": {major}}}, "package": "{package}"}}, "capabilities": ["oob"]}}}}\r\n')  # fmt: skip
        if terse:  # valid QMP that QEMU does not write: no spaces, "\n" line ends
            self.greeting = json.dumps(json.loads(self.greeting), separators=(",", ":")) + "\n"
        self._ready = threading.Event()

    def _answer(self, request: dict[str, Any]) -> str:
        command = str(request.get("execute"))
        if command in self.missing:
            return ('{"error": {"class": "CommandNotFound", "desc": "The command '
                    f'{command} has not been found"}}}}\r\n')  # fmt: skip
        arguments = request.get("arguments") or {}
        target = arguments.get("target")
        named = [str(r.get("provider")) for r in arguments.get("providers") or []]
        provider = arguments.get("provider") or "+".join(named)
        self.asked.append(" ".join(str(w) for w in (command, target, provider) if w))
        plain = self.answers.get(f"{command} {target}", self.answers.get(command, "{}"))
        if len(named) > 1:  # each provider's answer, the last named first (QEMU prepends)
            parts = [json.loads(self.answers.get(f"{command} {p}") or plain) for p in named]
            text = json.dumps([r for part in reversed(parts) for r in part])
        else:
            found = self.answers.get(f"{command} {provider}") if provider else None
            text = plain if found is None else found
        tail = f', "id": {json.dumps(request["id"])}' if "id" in request else ""
        if self.terse:  # an event first, then the reply, members in another order
            event = '{"timestamp":{"seconds":1,"microseconds":2},"event":"RESUME"}\n'
            return f'{event}{{ "return" :{text}{tail} }}\n'
        return f'{{"return": {text}{tail}}}\r\n'

    async def _serve(self) -> None:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)
            writer.write(self.greeting.encode())
            stream = JSONStreamParser()  # clients send JSON without newlines
            while data := await reader.read(4096):
                for message in stream.feed(data):
                    if not self.silent:
                        writer.write(self._answer(message.value).encode())
            writer.close()

        server = await asyncio.start_unix_server(client, path=str(self.path))
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await asyncio.sleep(60)
        server.close()

    def __enter__(self) -> FakePeer:
        threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True).start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def hang_up(self) -> None:
        """Close every connection from the server's side (a server that restarted)."""
        assert self._loop is not None
        done = threading.Event()

        def close() -> None:
            for writer in self._writers:
                writer.close()
            done.set()

        self._loop.call_soon_threadsafe(close)
        assert done.wait(10)


def test_qemu_without_query_stats_is_a_clear_error(tmp_path: Path) -> None:
    """A peer that behaves like QEMU 6.2: greets, negotiates, lacks query-stats."""
    commands = '[{"name": "query-version"}]'
    with FakePeer(tmp_path / "old.sock", {"query-commands": commands}, "6.2.0") as peer:
        out = vmstats("query", str(peer.path), "--target", "vm")
        assert out.returncode == 1
        assert "QEMU 6.2.0" in out.stderr
        assert "needs QEMU 7.1 or newer" in out.stderr
        assert os.path.exists(peer.path)


STATS_COMMANDS = json.dumps([{"name": n} for n in ("query-stats", "query-stats-schemas",
                                                   "query-commands")])  # fmt: skip
EXITS_SCHEMA = json.dumps(
    [
        {
            "provider": "kvm",
            "target": "vcpu",
            "stats": [{"name": "exits", "type": "cumulative", "exponent": 0, "base": 10}],
        }
    ]
)


@pytest.mark.parametrize(("reply", "where"), [
    ('[{"provider": "kvm", "stats": [{"name": "exits", "value": "many"}]}]', "$[0].stats[0].value"),
    ('[{"provider": "kvm", "stats": [{"name": "exits", "value": -1}]}]', "$[0].stats[0].value"),
    ('[{"provider": "kvm", "stats": [{"name": "exits", "value": [1, 2.5]}]}]', "value[1]"),
    ('[{"provider": "kvm", "stats": [{"name": 7, "value": 1}]}]', "$[0].stats[0].name"),
    ('[{"provider": "kvm", "qom-path": "/machine/cpu"}]', "missing required field `stats`"),
    ('{"stats": []}', "Expected `array`, got `object`"),
])  # fmt: skip
def test_a_malformed_query_stats_reply_is_named_not_a_crash(tmp_path: Path, reply: str,
                                                             where: str) -> None:  # fmt: skip
    """What no QEMU sends: ``query`` and ``top`` fail saying where, without a traceback."""
    answers = {"query-commands": STATS_COMMANDS, "query-stats-schemas": EXITS_SCHEMA,
               "query-stats vcpu": reply, "query-stats vm": "[]",
               "query-cpus-fast": "[]"}  # fmt: skip
    with FakePeer(tmp_path / "odd.sock", answers) as peer:
        out = vmstats("query", str(peer.path), "--target", "vcpu")
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert "malformed query-stats reply" in out.stderr
        assert where in out.stderr
        out = vmstats("top", str(peer.path), "--once")
        assert (out.returncode, out.stdout) == (1, ""), out.stderr
        assert out.stderr.startswith(
            "vmstats top: odd: malformed query-stats reply for target vcpu: "
        )
        assert where in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("device", "reason"), [
    ("/nonexistent/kvm", "/nonexistent/kvm does not exist"),
    ("/dev/null", "/dev/null does not answer KVM ioctls"),
])  # fmt: skip
def test_demo_without_usable_kvm_says_so(device: str, reason: str) -> None:
    out = subprocess.run([sys.executable, "-m", "vmstats", "demo", "--headless"],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "VMSTATS_KVM_DEVICE": device})  # fmt: skip
    assert out.returncode == 1
    assert reason in out.stderr
    assert "needs a usable /dev/kvm" in out.stderr


@pytest.mark.kvm
@requires_kvm
def test_demo_serves_qmp_on_loopback_tcp() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "vmstats", "demo", "--headless", "--vcpus", "1",
                             "--qmp-tcp", "0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert ", QMP tcp:127.0.0.1:" in line, line
    port = line.rsplit(":", 1)[1].strip()
    out = vmstats("info", f"127.0.0.1:{port}", "vcpu", "halt_exits")
    proc.terminate()
    assert proc.wait(10) == 0
    assert out.stdout.startswith("provider: kvm\n    halt_exits (cumulative): "), out.stderr


def test_any_valid_qmp_reply_is_taken_not_only_qemus_bytes(tmp_path: Path) -> None:
    """Another server's spacing and line ends, and events between replies: the stats are
    read, and ``--json`` prints the value as that server wrote it."""
    stats = '[{"provider":"kvm","stats":[{"name":"exits","value":42}]}]'
    schemas = ('[{"provider":"kvm","target":"vm","stats":[{"name":"exits",'
               '"type":"cumulative"}]}]')  # fmt: skip
    answers = {"query-commands": '[{"name":"query-stats"},{"name":"query-stats-schemas"}]',
               "query-stats-schemas": schemas, "query-stats vm": stats}  # fmt: skip
    with FakePeer(tmp_path / "terse.sock", answers, terse=True) as peer:
        out = vmstats("query", str(peer.path), "--target", "vm")
        assert out.returncode == 0, out.stderr
        assert "exits" in out.stdout
        assert "42" in out.stdout
        raw = vmstats("query", str(peer.path), "--target", "vm", "--json")
        assert (raw.returncode, raw.stdout) == (0, stats + "\n")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_text("x"), "a file, not a socket"),
    (lambda p: p.mkdir(), "a directory, not a socket"),
    (os.mkfifo, "a FIFO (named pipe), not a socket"),
    (lambda p: p.symlink_to("/dev/null"), "a device, not a socket"),
    (lambda p: None, "No such file or directory"),
])  # fmt: skip
def test_a_path_that_is_no_socket_is_named_as_such(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "not-a.sock"
    make(path)
    out = vmstats("query", str(path), "--target", "vm")
    assert out.returncode == 1
    assert out.stderr == f"vmstats: cannot connect to QMP at {path}: {message}\n"
