"""Real clients against our server over a real unix socket: qemu.qmp and qmp-shell."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.qmp.conftest import ServerThread, fake_server
from vmstats.errors import ClientError, RemoteError, SocketInUse
from vmstats.limits import ServerLimits
from vmstats.qmp.client import QmpClient
from vmstats.testing.hostile import read_until_closed, wait_for
from vmstats.testing.qemu import RawQMP


def test_qemu_qmp_client_talks_to_us(qmp_server: ServerThread) -> None:
    async def main() -> None:
        client = QMPClient("test")
        await client.connect(str(qmp_server.path))
        assert client.greeting is not None
        assert str(client.greeting.QMP.version["package"]).startswith("vmstats")
        vm = await client.execute("query-stats", {"target": "vm"})
        assert vm == [{"provider": "kvm", "stats": [{"name": "flushes", "value": 7},
                                                    {"name": "pages", "value": 100}]}]  # fmt: skip
        schemas = await client.execute("query-stats-schemas")
        assert isinstance(schemas, list)
        assert [s["target"] for s in schemas] == ["vcpu", "vm"]
        with pytest.raises(ExecuteError) as info:
            await client.execute("query-stats", {"target": "nope"})
        assert info.value.error.error.desc == "Parameter 'target' does not accept value 'nope'"
        text = await client.execute("human-monitor-command", {"command-line": "info stats vm"})
        assert (
            text == "provider: kvm\r\n    flushes (cumulative): 7\r\n    pages (instant): 100\r\n"
        )
        await client.disconnect()

    asyncio.run(main())


def _qmp_shell(path: Path, stdin: str, *flags: str) -> str:
    shell = shutil.which("qmp-shell", path=os.path.dirname(sys.executable))
    assert shell is not None, "qmp-shell comes with qemu.qmp"
    result = subprocess.run([shell, *flags, str(path)], input=stdin, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_qmp_shell_in_qmp_mode(qmp_server: ServerThread) -> None:
    out = _qmp_shell(
        qmp_server.path, 'query-stats target=vcpu vcpus=["/machine/unattached/device[1]"]\n'
    )
    assert '"qom-path": "/machine/unattached/device[1]"' in out
    assert '"name": "busy", "value": true' in out


def test_qmp_shell_in_hmp_mode(qmp_server: ServerThread) -> None:
    out = _qmp_shell(qmp_server.path, "info stats vcpu exits\ncpu 2\ninfo stats vm * kvm\n", "-H")
    assert "provider: kvm\n    exits (cumulative): 1000" in out
    assert "    flushes (cumulative): 7\n    pages (instant): 100" in out


def test_unix_socket_is_private(qmp_server: ServerThread) -> None:
    assert stat.S_IMODE(qmp_server.path.stat().st_mode) == 0o600


def test_a_client_that_never_reads_does_not_stall_others(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "s.sock", ServerLimits(write_timeout=1.0)) as server:
        hog = socket.socket(socket.AF_UNIX)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(str(server.path))
        hog.sendall(b'{"execute":"qmp_capabilities"}')
        request = b'{"execute":"query-qmp-schema"}' * 500
        hog.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while sent < len(request) and time.monotonic() < deadline:
            try:
                sent += hog.send(request[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        good = RawQMP(server.path, timeout=5)  # answered while the hog's replies wait
        good.negotiate()
        reply = good.request(b'{"execute":"query-stats","arguments":{"target":"vm"}}')
        assert reply.startswith(b'{"return": [{"provider": "kvm"')
        good.close()
        # the hog is dropped after the write timeout, though it never read (reading would
        # let the server write on): the server's count of connections says when
        assert wait_for(lambda: server.server.connections == 0, timeout=30)
        _, closed = read_until_closed(hog)
        assert closed
        hog.close()


def test_oversized_message_is_refused_and_the_connection_survives(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "s.sock", ServerLimits(max_message_size=4096)) as server:
        client = RawQMP(server.path)
        _refuse_then_recover(client)


def _refuse_then_recover(client: RawQMP) -> None:
    client.negotiate()
    reply = client.request(b'{"execute":"query-version","id":"' + b"x" * 8192 + b'"}')
    assert (
        reply
        == b'{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}\r\n'
    )
    # The rest of the dropped string lexes as more junk (as in QEMU); resynchronise with
    # 0xFF and a newline, then a request with an id must be answered normally.
    client.send(b'\xff\n{"execute":"query-version","id":"sync"}')
    while b'"sync"' not in (line := client.read_line()):
        assert line.startswith(b'{"error"')
    assert line.startswith(b'{"return"')
    client.close()


def test_stale_socket_is_replaced_but_a_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with ServerThread(path):
        assert RawQMP(path).greeting.startswith(b'{"QMP"')
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(SocketInUse, match="is not a socket"), ServerThread(regular):
        pass
    assert regular.read_text() == "keep me"


def test_a_socket_appears_only_once_it_listens_with_its_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that connects as soon as the path appears (a watcher of the daemon's run
    directory does) is greeted, never refused nor denied: while the socket is not
    listening yet, or not yet given its group, the path is not there.  (Clients were
    refused when the sockets appeared before they listened; once they listened at once,
    a test under load still was, between the bind and the listen.)"""
    path = tmp_path / "x.sock"
    seen: list[tuple[str, str]] = []

    def peek(step: str) -> None:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
            seen.append((step, "connected"))
        except FileNotFoundError:
            seen.append((step, "absent"))
        except ConnectionRefusedError:
            seen.append((step, "refused"))
        finally:
            probe.close()

    real_chown = os.chown

    def chown(*args: Any, **kwargs: Any) -> None:
        peek("chown")
        real_chown(*args, **kwargs)

    def backlog() -> int:
        peek("listen")
        return 16

    monkeypatch.setattr("vmstats.qmp.server.listen_backlog", backlog)
    monkeypatch.setattr("vmstats.qmp.server.os.chown", chown)
    server = fake_server()

    async def main() -> bytes:
        await server.start_unix(path, mode=0o660, group=os.getgid())
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            greeting = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return greeting
        finally:
            await server.close()

    assert asyncio.run(main()).startswith(b'{"QMP"')
    assert seen == [("listen", "absent"), ("chown", "absent")]
    assert list(tmp_path.iterdir()) == []  # nothing left beside it, and it is gone


def test_a_socket_path_is_refused_only_when_no_client_could_connect_by_it(
    tmp_path: Path,
) -> None:
    """107 bytes is the longest path a unix socket takes: such a path is served (made at
    the path itself when a hidden name beside it would not fit), a longer one refused
    as bind refuses it, with nothing made (a hidden name beside it would fit, and a
    rename would have put the socket out of reach)."""

    def folder(size: int) -> Path:
        made = tmp_path / str(size)
        made /= "d" * (size - len(os.fsencode(made)) - 1)
        made.mkdir(parents=True)
        assert len(os.fsencode(made)) == size
        return made

    longest = folder(100) / "s.sock"  # 107 bytes: ".new-XXXXXXXX" beside it would not fit
    with ServerThread(longest):
        assert RawQMP(longest).greeting.startswith(b'{"QMP"')
    too_long = folder(90) / ("s" * 17)  # 108 bytes; 104 beside it
    with pytest.raises(OSError, match="AF_UNIX path too long"), ServerThread(too_long):
        pass
    assert [list(f.iterdir()) for f in (longest.parent, too_long.parent)] == [[], []]


def test_tcp_listener_is_loopback_by_default(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "unused.sock") as server:
        port = asyncio.run_coroutine_threadsafe(
            server.server.start_tcp(port=0), server.loop
        ).result(10)

        async def main() -> None:
            client = QMPClient("tcp")
            await client.connect(("127.0.0.1", port))
            assert await client.execute("query-stats", {"target": "vm", "providers": []}) == []
            await client.disconnect()

        asyncio.run(main())
        bound = [
            listener.sock.getsockname()
            for listener in server.server._listeners
            if listener.sock.family == socket.AF_INET
        ]
        assert bound == [("127.0.0.1", port)]


async def execute_once(address: str, command: str, arguments: dict[str, Any] | None = None
                       ) -> bytes:  # fmt: skip
    async with QmpClient(address) as qmp:
        return await qmp.execute(command, arguments)


def test_raw_execute_returns_the_bytes_the_server_wrote(qmp_server: ServerThread) -> None:
    value = asyncio.run(execute_once(str(qmp_server.path), "query-stats", {"target": "vm"}))
    client = RawQMP(qmp_server.path)
    client.negotiate()
    line = client.request(b'{"execute": "query-stats", "arguments": {"target": "vm"}}')
    client.close()
    assert line == b'{"return": ' + value + b"}\r\n"
    with pytest.raises(ClientError, match="GenericError: Parameter 'target' does not accept"):
        asyncio.run(execute_once(str(qmp_server.path), "query-stats", {"target": "nope"}))
    with pytest.raises(ClientError, match="cannot connect"):
        asyncio.run(execute_once(str(qmp_server.path) + ".none", "query-stats"))


def test_raw_requests_sent_together_are_answered_in_order_and_stay_in_step(
    qmp_server: ServerThread,
) -> None:
    """``execute_all`` writes its requests at once; an error reply in the middle is raised
    only after every reply is read, so the next command gets its own reply."""

    async def main() -> None:
        async with QmpClient(str(qmp_server.path)) as qmp:
            alone = [await qmp.execute("query-stats", {"target": t}) for t in ("vm", "vcpu")]
            together = await qmp.execute_all(
                [("query-stats", {"target": t}) for t in ("vm", "vcpu")]
            )
            assert together == alone
            with pytest.raises(RemoteError, match="CommandNotFound"):
                await qmp.execute_all([("query-stats", {"target": "vm"}), ("no-such", None),
                                       ("query-stats", {"target": "vcpu"})])  # fmt: skip
            assert await qmp.execute("query-stats", {"target": "vm"}) == alone[0]
            assert await qmp.execute_all([("query-name", None)]) == [b"{}"]

    asyncio.run(main())
