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

# Token types (QEMU's JSONTokenType) and lexer states share one number space.
(
    JSON_ERROR,
    IN_RECOVERY,
    IN_DQ_STRING_ESCAPE,
    IN_DQ_STRING,
    IN_SQ_STRING_ESCAPE,
    IN_SQ_STRING,
    IN_ZERO,
    IN_EXP_DIGITS,
    IN_EXP_SIGN,
    IN_EXP_E,
    IN_MANTISSA,
    IN_MANTISSA_DIGITS,
    IN_DIGITS,
    IN_SIGN,
    IN_KEYWORD,
    IN_START,
) = range(16)
(
    JSON_LCURLY,
    JSON_RCURLY,
    JSON_LSQUARE,
    JSON_RSQUARE,
    JSON_COLON,
    JSON_COMMA,
    JSON_INTEGER,
    JSON_FLOAT,
    JSON_KEYWORD,
    JSON_STRING,
    JSON_END_OF_INPUT,
) = range(16, 27)
JSON_MIN = JSON_LCURLY
LOOKAHEAD = 0x80

#: QEMU's limits per message; the size limit may be lowered (see JSONStreamParser).
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


def _build_table() -> list[list[int]]:
    table = [[JSON_ERROR] * 256 for _ in range(IN_START + 1)]

    def fill(state: int, lo: int, hi: int, value: int) -> None:
        for ch in range(lo, hi + 1):
            table[state][ch] = value

    def terminal(state: int, token: int) -> None:
        fill(state, 0, 0xFF, token | LOOKAHEAD)

    def chars(state: int, text: str, value: int) -> None:
        for ch in text:
            table[state][ord(ch)] = value

    fill(IN_RECOVERY, 0, 0x1F, IN_START | LOOKAHEAD)
    fill(IN_RECOVERY, 0x20, 0xFD, IN_RECOVERY)
    fill(IN_RECOVERY, 0xFE, 0xFF, IN_START | LOOKAHEAD)
    chars(IN_RECOVERY, "\t", IN_RECOVERY)
    chars(IN_RECOVERY, "[]{}:,", IN_START | LOOKAHEAD)
    for escape, string, quote in (
        (IN_DQ_STRING_ESCAPE, IN_DQ_STRING, '"'),
        (IN_SQ_STRING_ESCAPE, IN_SQ_STRING, "'"),
    ):
        fill(escape, 0x20, 0xFD, string)
        fill(string, 0x20, 0xFD, string)
        chars(string, "\\", escape)
        chars(string, quote, JSON_STRING)
    terminal(IN_ZERO, JSON_INTEGER)
    chars(IN_ZERO, "0123456789", JSON_ERROR)
    chars(IN_ZERO, ".", IN_MANTISSA)
    terminal(IN_EXP_DIGITS, JSON_FLOAT)
    chars(IN_EXP_DIGITS, "0123456789", IN_EXP_DIGITS)
    chars(IN_EXP_SIGN, "0123456789", IN_EXP_DIGITS)
    chars(IN_EXP_E, "-+", IN_EXP_SIGN)
    chars(IN_EXP_E, "0123456789", IN_EXP_DIGITS)
    terminal(IN_MANTISSA_DIGITS, JSON_FLOAT)
    chars(IN_MANTISSA_DIGITS, "0123456789", IN_MANTISSA_DIGITS)
    chars(IN_MANTISSA_DIGITS, "eE", IN_EXP_E)
    chars(IN_MANTISSA, "0123456789", IN_MANTISSA_DIGITS)
    terminal(IN_DIGITS, JSON_INTEGER)
    chars(IN_DIGITS, "0123456789", IN_DIGITS)
    chars(IN_DIGITS, "eE", IN_EXP_E)
    chars(IN_DIGITS, ".", IN_MANTISSA)
    chars(IN_SIGN, "0", IN_ZERO)
    chars(IN_SIGN, "123456789", IN_DIGITS)
    terminal(IN_KEYWORD, JSON_KEYWORD)
    chars(IN_KEYWORD, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    chars(IN_START, '"', IN_DQ_STRING)
    chars(IN_START, "'", IN_SQ_STRING)
    chars(IN_START, "0", IN_ZERO)
    chars(IN_START, "123456789", IN_DIGITS)
    chars(IN_START, "-", IN_SIGN)
    for ch, token in zip(
        "{}[],:",
        (JSON_LCURLY, JSON_RCURLY, JSON_LSQUARE, JSON_RSQUARE, JSON_COMMA, JSON_COLON),
        strict=True,
    ):
        chars(IN_START, ch, token)
    chars(IN_START, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    chars(IN_START, " \t\r\n", IN_START)
    return table


_TABLE = _build_table()


@dataclass(frozen=True, slots=True)
class Token:
    type: int
    text: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One top-level result: a parsed value, or the error QEMU would report for it."""

    value: Any = None
    error: str | None = None


class ParseError(Exception):
    pass


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
        table = _TABLE
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
            nxt = _TABLE[self._state][0] & ~LOOKAHEAD
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
        quote = raw[0]
        out: list[str] = []
        pos = 1
        while raw[pos] != quote:
            ch = raw[pos]
            if ch == 0x5C:  # backslash
                begin = pos
                esc = raw[pos + 1]
                pos += 2
                simple = {
                    0x22: '"',
                    0x27: "'",
                    0x5C: "\\",
                    0x2F: "/",
                    0x62: "\b",
                    0x66: "\f",
                    0x6E: "\n",
                    0x72: "\r",
                    0x74: "\t",
                }.get(esc)
                if simple is not None:
                    out.append(simple)
                    continue
                if esc != 0x75:  # u
                    self._fail("invalid escape sequence in string")
                    return None
                cp = _hex4(raw, pos)
                pos += 4
                if 0xD800 <= cp <= 0xDBFF and raw[pos : pos + 2] == b"\\u":
                    trailing = _hex4(raw, pos + 2)
                    if 0xDC00 <= trailing <= 0xDFFF:
                        cp = 0x10000 + ((cp & 0x3FF) << 10) + (trailing & 0x3FF)
                        pos += 6
                    else:
                        cp = -1
                if not utf8.is_valid_codepoint(cp):
                    shown = utf8.decode_replacing(raw[begin:pos])
                    self._fail(f"{shown} is not a valid Unicode character")
                    return None
                out.append(chr(cp))
            else:
                cp, pos = utf8.codepoint(raw, pos)
                if cp < 0:
                    self._fail("invalid UTF-8 sequence in string")
                    return None
                out.append(chr(cp))
        return "".join(out)


def _hex4(raw: bytes, pos: int) -> int:
    digits = raw[pos : pos + 4]
    if len(digits) != 4 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)
