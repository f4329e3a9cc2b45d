"""HTTP basic authentication for ``/metrics`` against bcrypt hashes (the web config's
``basic_auth_users``), and TLS spoken over a transport's bytes.

bcrypt is slow on purpose (a cost-12 check takes a few hundred ms here), so checks run on
one thread of their own, never on the event loop, and a good password is remembered (by
a digest, with its hash) as exporter-toolkit does: Prometheus, scraping every few seconds
with the same credentials, pays once; someone trying passwords waits for bcrypt behind
their own tries while everyone else is served.  An unknown user is checked against a
dummy hash of the same cost, so the time does not tell which users exist.

TLS is done sans-I/O (:class:`ssl.SSLObject` over memory buffers) like HTTP (h11) and
QMP: the connection sees the first byte a client sends, and a client speaking plain
HTTP to the TLS port gets a plain 400 that says so, as Go's servers answer, instead of a
broken handshake.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import bcrypt

#: Good credentials remembered at most (each a digest): more users than any host has.
_REMEMBERED = 256


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against ``users`` (user -> bcrypt hash);
    with no users, every request is allowed."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._good: set[bytes] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmstats-bcrypt")
        cost = next(iter(self.users.values()), b"$2b$04$")[4:6]
        self._dummy = bcrypt.hashpw(b"not a password", b"$2b$" + cost + bcrypt.gensalt()[6:])

    @property
    def required(self) -> bool:
        return bool(self.users)

    async def allows(self, header: bytes | None) -> bool:
        """Does this ``Authorization`` header name a user with the right password?"""
        if not self.users:
            return True
        credentials = _basic(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password, hashed or b""))).digest()
        if hashed is not None and key in self._good:
            return True
        loop = asyncio.get_running_loop()
        good = await loop.run_in_executor(self._pool, bcrypt.checkpw, password,
                                          hashed or self._dummy)  # fmt: skip
        if not good or hashed is None:
            return False
        if len(self._good) >= _REMEMBERED:
            self._good.clear()
        self._good.add(key)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _basic(header: bytes | None) -> tuple[str, bytes] | None:
    """``(user, password)`` of a basic ``Authorization`` header, or None."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


class TlsLayer:
    """The server side of one TLS connection, over bytes: :meth:`receive` takes what the
    client sent and returns the plaintext; what to send back is in :meth:`outgoing`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._handshaken = False
        self.closed = False  # the client ended TLS (close_notify)

    def receive(self, data: bytes) -> bytes:
        """Plaintext from the client's bytes; :class:`ssl.SSLError` if the handshake or
        the record layer fails (a certificate not trusted, garbage)."""
        self._in.write(data)
        if not self._handshaken:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self._handshaken = True
        chunks = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        self._tls.write(data)

    def outgoing(self) -> bytes:
        """What TLS has to send now (handshake records, encrypted replies)."""
        return self._out.read()


def looks_like_tls(first: bytes) -> bool:
    """Does a connection's first byte open a TLS handshake (a record of type 22)?"""
    return first[:1] == b"\x16"
