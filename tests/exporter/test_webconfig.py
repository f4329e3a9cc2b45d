"""``--web-config``: exporter-toolkit's file read strictly, and ``/metrics`` over TLS with
basic auth against real TLS clients (Python's ssl, certificates made by openssl)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.exporter.test_http import SlowVm
from vmstats.errors import UsageError
from vmstats.exporter.http import MetricsEndpoint
from vmstats.exporter.webconfig import read_web_config
from vmstats.testing.certs import Pki, make_pki, openssl_unavailable_reason
from vmstats.testing.hostile import read_until_closed, wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import stop_process

pytestmark = pytest.mark.skipif(openssl_unavailable_reason() is not None,
                                reason=str(openssl_unavailable_reason()))  # fmt: skip

PASSWORD = b"s3cret: with a colon"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(pki: Pki, text: str) -> Path:
    path = pki.ca.parent / "web.yml"
    path.write_text(text)
    return path


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nonsense: 1\n", "unknown setting nonsense (known: basic_auth_users, tls_server_config)"),
        (TLS + "  cipher_suites: [x]\n", "tls_server_config.cipher_suites: not supported"),
        ("http_server_config:\n  http2: false\n", "http_server_config: not supported"),
        (TLS + "  colour: blue\n", "unknown setting tls_server_config.colour"),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom: not a bcrypt hash"),
        ("basic_auth_users:\n  prom: 12\n", "basic_auth_users.prom: not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file is required"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
         "cannot load missing.crt and server.key: No such file or directory"),
        ("tls_server_config:\n  cert_file: web.yml\n  key_file: server.key\n",
         "cannot load web.yml and server.key: [SSL] PEM lib"),  # not a certificate
        ("tls_server_config:\n  cert_file: ca.crt\n  key_file: server.key\n",
         "KEY_VALUES_MISMATCH"),  # another's certificate
        (TLS + "  client_auth_type: RequireAnyClientCert\n",
         "client_auth_type 'RequireAnyClientCert' is not supported"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        (TLS + "  min_version: SSL3\n", "tls_server_config.min_version 'SSL3': one of TLS10"),
        ("- a list\n", "must be a mapping"),
        ("a: [unclosed\n", "not YAML"),
    ],
)  # fmt: skip
def test_a_wrong_web_config_is_named(pki: Pki, text: str, says: str) -> None:
    with pytest.raises(UsageError, match=r"web\.yml: ") as error:
        read_web_config(web_config(pki, text))
    assert says in str(error.value)


def test_a_missing_web_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read .*nothing.yml: No such file"):
        read_web_config(tmp_path / "nothing.yml")


@pytest.fixture
def secured(pki: Pki) -> Iterator[int]:
    """An endpoint with TLS (client certificates verified if given) and one user."""
    path = web_config(pki, TLS + "  client_auth_type: VerifyClientCertIfGiven\n"
                      f"  client_ca_file: ca.crt\nbasic_auth_users:\n  prom: '{HASH}'\n")  # fmt: skip
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    vm = SlowVm()
    metrics = MetricsEndpoint(lambda: [vm], 5.0)
    metrics.use_web_config(read_web_config(path))
    yield asyncio.run_coroutine_threadsafe(metrics.start("127.0.0.1", 0), loop).result(10)
    asyncio.run_coroutine_threadsafe(metrics.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def client(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def status(port: int, context: ssl.SSLContext, password: bytes | None = PASSWORD,
           user: str = "prom") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    headers = {}
    if password is not None:
        token = base64.b64encode(user.encode() + b":" + password).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        connection.request("GET", "/metrics", headers=headers)
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


def test_tls_and_basic_auth_let_the_right_client_in_and_no_one_else(secured: int, pki: Pki) -> None:
    port = secured
    ok, _, body = status(port, client(pki))
    assert ok == 200
    assert b"vmstats_up" in body
    assert status(port, client(pki, pki.client))[0] == 200  # a certificate of our CA: fine
    for password, user in ((None, "prom"), (b"wrong", "prom"), (PASSWORD, "nobody")):
        code, headers, body = status(port, client(pki), password, user)
        assert code == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="vmstats"'
        assert b"vmstats_up" not in body
    with pytest.raises(ssl.SSLError):  # a certificate of another CA: no handshake
        status(port, client(pki, pki.stranger))
    assert status(port, client(pki))[0] == 200  # and nothing else was affected


def test_plain_http_to_the_tls_port_gets_a_plain_400(secured: int) -> None:
    with socket.create_connection(("127.0.0.1", secured), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply, closed = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b"Client sent an HTTP request to an HTTPS server.\n")
    assert closed


def test_garbage_instead_of_a_handshake_is_closed(secured: int, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", secured), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 100)
        _, closed = read_until_closed(sock)
    assert closed
    assert status(secured, client(pki))[0] == 200


def test_sighup_rereads_the_web_config_and_keeps_it_when_the_new_one_is_wrong(
    pki: Pki, tmp_path: Path
) -> None:
    other = b"another password"
    path = web_config(pki, TLS + f"basic_auth_users:\n  prom: '{HASH}'\n")
    port = free_port()
    log = tmp_path / "log"
    with log.open("w") as stderr:
        exporter = subprocess.Popen([sys.executable, "-m", "vmstats", "exporter", str(tmp_path),
                                     "--listen", f"127.0.0.1:{port}", "--web-config", str(path)],
                                    stderr=stderr)  # fmt: skip
    try:

        def code(password: bytes, user: str = "prom") -> int:
            try:
                return status(port, client(pki), password, user)[0]
            except OSError:
                return 0

        assert wait_for(lambda: code(PASSWORD) == 200)
        hashed = bcrypt.hashpw(other, bcrypt.gensalt(rounds=4)).decode()
        path.write_text(TLS + f"basic_auth_users:\n  alice: '{hashed}'\n")
        exporter.send_signal(signal.SIGHUP)
        assert wait_for(lambda: code(other, "alice") == 200)
        assert code(PASSWORD) == 401  # the old user is gone
        path.write_text(TLS + "basic_auth_users:\n  alice: plain-text\n")
        exporter.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "keeping the one in use" in log.read_text())
        assert code(other, "alice") == 200
    finally:
        assert stop_process(exporter) == 0
    assert "basic_auth_users.alice: not a bcrypt hash" in log.read_text()


def test_a_wrong_web_config_stops_the_command_with_one_line(pki: Pki, tmp_path: Path) -> None:
    path = web_config(pki, "basic_auth_users:\n  prom: plain-text\n")
    for command in (["exporter", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"],
                    ["serve", "--run-dir", str(tmp_path / "run"), "--metrics",
                     f"127.0.0.1:{free_port()}", "--qmp", str(tmp_path / "none.qmp")]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "vmstats", *command, "--web-config",
                               str(path)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode in (1, 2), done.stderr
        assert "--web-config: " in done.stderr
        assert "basic_auth_users.prom: not a bcrypt hash" in done.stderr
        assert "Traceback" not in done.stderr
    alone = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--once", "--web-config",
                            str(path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert alone.returncode == 2
    assert alone.stderr == "vmstats serve: --web-config is for /metrics: give --metrics too\n"
