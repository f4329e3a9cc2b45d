"""The reference streamer: a byte-at-a-time port of QEMU's JSON lexer, streamer and parser.

Kept as the oracle for :mod:`vmstats.qmp.jsonstream`, which must produce the same messages
for every byte stream however it is cut (the fast streamer is tested against this one and
this one against a live QEMU).  Slow on purpose: one Python step per byte, a Token per token.

Original description follows.  Turn a QMP byte stream into JSON values exactly as QEMU's JSON streamer does.

Three layers, each a port of QEMU's (``qobject/json-lexer.c``, ``json-streamer.c``,
``json-parser.c``): a byte-driven lexer with error recovery, a streamer that cuts the token
stream into top-level values by counting brackets and enforces limits, and a recursive
descent parser with QEMU's error texts.  Why so literal: clients send JSON without
newlines and sometimes broken JSON, and the number, order and text of the error replies
are part of QEMU's observable behaviour.  Single-quoted strings are accepted, duplicate
keys rejected, integers beyond 64 bits become floats, as in QEMU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmstats.qmp import utf8

# QEMU's lexer table and token types are data, shared with the fast streamer; what this
# module keeps apart is how the bytes are driven through them (one at a time) and the
# streamer's limits, QEMU's numbers written here again so that the oracle shares none.
from vmstats.qmp.jsonstream.lexer import (
    IN_RECOVERY,
    IN_START,
    JSON_COLON,
    JSON_COMMA,
    JSON_END_OF_INPUT,
    JSON_ERROR,
    JSON_FLOAT,
    JSON_INTEGER,
    JSON_KEYWORD,
    JSON_LCURLY,
    JSON_LSQUARE,
    JSON_MIN,
    JSON_RCURLY,
    JSON_RSQUARE,
    JSON_STRING,
    LOOKAHEAD,
    TABLE,
)
from vmstats.qmp.jsonstream.parser import ParseError, string_slow

#: qobject/json-streamer.c: MAX_TOKEN_SIZE, MAX_TOKEN_COUNT, MAX_NESTING.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


@dataclass(frozen=True, slots=True)
class Token:
    type: int
    text: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One top-level result: a parsed value, or the error QEMU would report for it."""

    value: Any = None
    error: str | None = None


class JSONStreamParser:
    """Feed bytes, get complete messages.  State survives between feeds.

    ``max_message_size`` caps the bytes of one message (QEMU: 64 MiB); past it the message
    is dropped with QEMU's "JSON token size limit exceeded".
    """

    def __init__(
        self, max_message_size: int = MAX_TOKEN_SIZE, max_tokens: int = MAX_TOKEN_COUNT
    ) -> None:
        self.max_size = max_message_size
        self.max_tokens = max_tokens
        self._state = IN_START
        self._token = bytearray()
        self._tokens: list[Token] = []
        self._token_size = 0
        self._braces = 0
        self._brackets = 0
        self._out: list[Message] = []

    # -- lexer ----------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Message]:
        table = TABLE
        token = self._token
        for ch in data:
            consumed = False
            while not consumed:
                nxt = table[self._state][ch]
                consumed = not nxt & LOOKAHEAD
                nxt &= ~LOOKAHEAD
                if consumed:
                    token.append(ch)
                if nxt >= JSON_MIN:
                    self._process(bytes(token), nxt)
                    token.clear()
                    nxt = IN_START
                elif nxt == IN_START:
                    token.clear()
                elif nxt == JSON_ERROR:
                    self._process(bytes(token), JSON_ERROR)
                    token.clear()
                    nxt = IN_RECOVERY
                elif nxt == IN_RECOVERY:
                    token.clear()
                self._state = nxt
            if len(token) > self.max_size:
                self._process(bytes(token), self._state)
                token.clear()
                self._state = IN_START
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Message]:
        """End of input: finish a pending token (QEMU does this when a client goes away)."""
        while self._state != IN_START:
            nxt = TABLE[self._state][0] & ~LOOKAHEAD
            if nxt >= JSON_MIN:
                self._process(bytes(self._token), nxt)
                nxt = IN_START
            elif nxt == JSON_ERROR:
                self._process(bytes(self._token), JSON_ERROR)
                nxt = IN_START
            elif nxt == IN_RECOVERY:
                nxt = IN_START
            self._token.clear()
            self._state = nxt
        self._process(b"", JSON_END_OF_INPUT)
        out, self._out = self._out, []
        return out

    # -- streamer -------------------------------------------------------------------

    def _emit(self, message: Message) -> None:
        self._braces = self._brackets = 0
        self._tokens = []
        self._token_size = 0
        self._out.append(message)

    def _process(self, text: bytes, kind: int) -> None:
        if kind == JSON_LCURLY:
            self._braces += 1
        elif kind == JSON_RCURLY:
            self._braces -= 1
        elif kind == JSON_LSQUARE:
            self._brackets += 1
        elif kind == JSON_RSQUARE:
            self._brackets -= 1
        elif kind == JSON_ERROR:
            # QEMU formats the token as a C string: it ends at the first NUL byte.
            shown = utf8.decode_replacing(text.split(b"\0", 1)[0])
            self._emit(Message(error=f"JSON parse error, stray '{shown}'"))
            return
        elif kind == JSON_END_OF_INPUT:
            if self._tokens:
                self._emit(self._parse())
            return
        if self._token_size + len(text) + 1 > self.max_size:
            self._emit(Message(error="JSON token size limit exceeded"))
            return
        if len(self._tokens) + 1 > self.max_tokens:
            self._emit(Message(error="JSON token count limit exceeded"))
            return
        if self._braces + self._brackets > MAX_NESTING:
            self._emit(Message(error="JSON nesting depth limit exceeded"))
            return
        self._tokens.append(Token(kind, text))
        self._token_size += len(text)
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return
        self._emit(self._parse())

    def _parse(self) -> Message:
        parser = _Parser(self._tokens)
        value = parser.parse_value()
        if parser.error is not None:
            return Message(error=f"JSON parse error, {parser.error}")
        return Message(value=value)


class _Parser:
    """QEMU's recursive descent over one message's tokens; keeps the first error."""

    def __init__(self, tokens: list[Token]) -> None:
        self._tokens: Iterator[Token] = iter(tokens)
        self._peeked: Token | None = None
        self._has_peek = False
        self.error: str | None = None

    def _peek(self) -> Token | None:
        if not self._has_peek:
            self._peeked = next(self._tokens, None)
            self._has_peek = True
        return self._peeked

    def _pop(self) -> Token | None:
        token = self._peek()
        self._has_peek = False
        return token

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def parse_value(self) -> Any:
        token = self._peek()
        if token is None:
            self._fail("premature EOI")
            return None
        if token.type == JSON_LCURLY:
            return self._object()
        if token.type == JSON_LSQUARE:
            return self._array()
        if token.type in (JSON_INTEGER, JSON_FLOAT, JSON_STRING):
            return self._literal()
        if token.type == JSON_KEYWORD:
            self._pop()
            keyword = token.text.decode("ascii")
            if keyword in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[keyword]
            self._fail(f"invalid keyword '{keyword}'")
            return None
        self._fail("expecting value")
        return None

    def _object(self) -> Any:
        self._pop()
        result: dict[str, Any] = {}
        peek = self._peek()
        if peek is None:
            self._fail("premature EOI")
            return None
        if peek.type == JSON_RCURLY:
            self._pop()
            return result
        while True:
            if not self._pair(result):
                return None
            token = self._pop()
            if token is None:
                self._fail("premature EOI")
                return None
            if token.type == JSON_RCURLY:
                return result
            if token.type != JSON_COMMA:
                self._fail("expected separator in dict")
                return None

    def _pair(self, into: dict[str, Any]) -> bool:
        if self._peek() is None:
            self._fail("premature EOI")
            return False
        key = self.parse_value()
        if not isinstance(key, str):
            self._fail("key is not a string in object")
            return False
        token = self._pop()
        if token is None:
            self._fail("premature EOI")
            return False
        if token.type != JSON_COLON:
            self._fail("missing : in object pair")
            return False
        value = self.parse_value()
        if value is None and self.error is not None:
            self._fail("Missing value in dict")
            return False
        if key in into:
            self._fail("duplicate key")
            return False
        into[key] = value
        return True

    def _array(self) -> Any:
        self._pop()
        result: list[Any] = []
        peek = self._peek()
        if peek is None:
            self._fail("premature EOI")
            return None
        if peek.type == JSON_RSQUARE:
            self._pop()
            return result
        while True:
            value = self.parse_value()
            if value is None and self.error is not None:
                self._fail("expecting value")
                return None
            result.append(value)
            token = self._pop()
            if token is None:
                self._fail("premature EOI")
                return None
            if token.type == JSON_RSQUARE:
                return result
            if token.type != JSON_COMMA:
                self._fail("expected separator in list")
                return None

    def _literal(self) -> Any:
        token = self._pop()
        assert token is not None
        if token.type == JSON_STRING:
            return self._string(token.text)
        text = token.text.decode("ascii")
        if token.type == JSON_INTEGER:
            number = int(text)
            if -(1 << 63) <= number < (1 << 64):
                return number
        return float(text)

    def _string(self, raw: bytes) -> str | None:
        try:  # QEMU's parse_string, shared: it is checked against QEMU directly
            return string_slow(raw)
        except ParseError as exc:
            self._fail(exc.args[0])
            return None
