"""Turn a QMP byte stream into JSON values exactly as QEMU's JSON streamer does, fast and in
bounded memory.

QEMU reads QMP with three layers (``qobject/json-lexer.c``, ``json-streamer.c``,
``json-parser.c``): a byte-driven lexer with error recovery, a streamer that cuts the token
stream into top-level messages by counting brackets and enforces limits, and a recursive
descent parser with its own error texts.  The number, order and text of the error replies
for broken input are part of QEMU's observable behaviour, so all three are reproduced:
single-quoted strings are accepted, duplicate keys rejected, integers beyond 64 bits become
floats, and so on.  ``tests/qmp/reference_stream.py`` keeps the literal byte-at-a-time port
as the oracle this module is tested against; this one differs only in cost:

- **Runs, not bytes.** Whole tokens (and whole runs of separators, openers, string bytes,
  digits or junk in error recovery) are matched by compiled regular expressions; the
  lexer's state table is consulted byte by byte only at the edges of a read.  The run
  classes are derived from the state table itself, so they cannot disagree with it.
- **Bounded memory.** A message in progress is held as its token text (punctuation and
  strings as they are, numbers and keywords followed by one space), not as token objects:
  at most ``max_message_size`` plus one byte per token.  ``max_tokens`` caps the tokens
  of a message (QEMU's "JSON token count limit exceeded"), which also bounds the parse.
- **No recursion.** The parser keeps its own stack, so the 1,024 levels of nesting QEMU
  allows are parsed, not a ``RecursionError``.
- **Incremental.** :meth:`JSONStreamParser.next_message` lexes at most ``SLICE`` bytes per
  call and stops at the first complete message, so a server answers (and applies
  backpressure) message by message and bounds the work it does for one client at a time.
"""

from __future__ import annotations

import re
from collections import deque
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

#: QEMU's limits per message.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10
#: A server's defaults: far above any real request (a query naming 1,000 vCPUs is about
#: 3,000 tokens and 50 KiB), far below QEMU's, so that one connection holds little.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
DEFAULT_MAX_TOKENS = 32 << 10
#: Bytes lexed per :meth:`JSONStreamParser.next_message` call, at most.
SLICE = 16 << 10
#: Repeated requests remembered per parser, and the largest remembered.
REPEATS = 32
REPEAT_SIZE = 4096

_PUNCTUATION = {
    ord("{"): JSON_LCURLY,
    ord("}"): JSON_RCURLY,
    ord("["): JSON_LSQUARE,
    ord("]"): JSON_RSQUARE,
    ord(","): JSON_COMMA,
    ord(":"): JSON_COLON,
}


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
    for ch, token in _PUNCTUATION.items():
        table[IN_START][ch] = token
    chars(IN_START, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    chars(IN_START, " \t\r\n", IN_START)
    return table


_TABLE = _build_table()


def _byte_class(state: int, target: int | None = None) -> bytes:
    """A regex class of the bytes that take the lexer from ``state`` to ``target``
    (by default back to ``state``: its self-loops)."""
    target = state if target is None else target
    members = [ch for ch in range(256) if _TABLE[state][ch] == target]
    return b"[" + b"".join(re.escape(bytes([ch])) for ch in members) + b"]"


#: Runs of bytes that leave the lexer in the same state, per state: consumed in one step.
_RUNS = {
    state: re.compile(_byte_class(state) + b"+")
    for state in (
        IN_RECOVERY,
        IN_DQ_STRING,
        IN_SQ_STRING,
        IN_DIGITS,
        IN_MANTISSA_DIGITS,
        IN_EXP_DIGITS,
        IN_KEYWORD,
    )
}
#: Token text grows in these states (in recovery and at the start it is dropped).
_GROWING = frozenset(_RUNS) - {IN_RECOVERY}

_DQ_BODY = _byte_class(IN_DQ_STRING) + b"|\\\\" + _byte_class(IN_DQ_STRING_ESCAPE, IN_DQ_STRING)
_SQ_BODY = _byte_class(IN_SQ_STRING) + b"|\\\\" + _byte_class(IN_SQ_STRING_ESCAPE, IN_SQ_STRING)
_INT = rb"(?:0|[1-9][0-9]*)"
#: Complete tokens from the start state.  Numbers and keywords end where the next byte
#: cannot continue them (QEMU's lookahead), so they match only when that byte is here.
_WS, _OPENERS, _SEPARATORS, _CLOSER, _STRING, _FLOAT, _INTEGER, _KEYWORD = range(1, 9)
_START = re.compile(
    rb"([ \t\r\n]+)"
    rb"|([\[{]+)"
    rb"|([,:]+)"
    rb"|([\]}])"
    rb'|("(?:' + _DQ_BODY + rb')*"|\'(?:' + _SQ_BODY + rb")*')"
    rb"|(-?(?:" + _INT + rb"\.[0-9]+(?:[eE][-+]?[0-9]+(?=[^0-9])|(?=[^0-9eE]))"
    rb"|[1-9][0-9]*[eE][-+]?[0-9]+(?=[^0-9])))"
    rb"|(-?(?:0(?=[^0-9.])|[1-9][0-9]*(?=[^0-9eE.])))"
    rb"|([a-z]+(?=[^a-z]))"
)

_VALUE_TYPES = {
    _STRING: JSON_STRING,
    _FLOAT: JSON_FLOAT,
    _INTEGER: JSON_INTEGER,
    _KEYWORD: JSON_KEYWORD,
}

#: Tokens of a stored message, which are all complete and valid: every number and keyword
#: is followed by one space, so the groups below are unambiguous.  Group = token type.
_RELEX = re.compile(
    rb"(\{)|(\})|(\[)|(\])|(:)|(,)|(-?[0-9]+(?= ))|(-?[0-9][-+.0-9eE]*)|([a-z]+)"
    rb'|("[^"\\]*(?:\\.[^"\\]*)*"|\'[^\'\\]*(?:\\.[^\'\\]*)*\')',
    re.DOTALL,
)
_RELEX_TYPES = (
    JSON_ERROR,  # no group 0
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
)
_NEEDS_SEPARATOR = frozenset((JSON_INTEGER, JSON_FLOAT, JSON_KEYWORD))


@dataclass(frozen=True, slots=True)
class Message:
    """One top-level result: a parsed value, or the error QEMU would report for it."""

    value: Any = None
    error: str | None = None


class JSONStreamParser:
    """Bytes in, complete messages out; state survives between reads.

    ``max_message_size`` caps the bytes of one message (QEMU: 64 MiB) and ``max_tokens``
    its tokens (QEMU: 2 Mi); past either the message is dropped with QEMU's error text.
    Use :meth:`receive_data` and :meth:`next_message` to work message by message, or
    :meth:`feed` to get every message at once.
    """

    def __init__(
        self,
        max_message_size: int = MAX_TOKEN_SIZE,
        max_tokens: int = MAX_TOKEN_COUNT,
    ) -> None:
        self.max_size = max_message_size
        self.max_tokens = max_tokens
        self._input = b""
        self._pos = 0
        self._state = IN_START
        self._token = bytearray()  # a token cut by the end of a read
        self._text = bytearray()  # the message so far, as token text
        self._count = 0
        self._size = 0
        self._braces = 0
        self._brackets = 0
        self._out: deque[Message] = deque()
        self._repeats: dict[bytes, Message] = {}
        self._candidate: bytes | None = None
        self._emitted = 0

    # -- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Queue bytes for lexing (nothing is lexed until :meth:`next_message`).

        Polling clients send the same request again and again, one per write.  A read
        that arrives when nothing is pending and is exactly a request seen before (the
        same bytes, from the same idle state: so the same tokens and the same message)
        is answered from memory instead of being lexed and parsed again.
        """
        idle = not self._input and self._state == IN_START and not self._count and not self._out
        self._candidate = None
        if idle:
            seen = self._repeats.get(data)
            if seen is not None:
                self._out.append(seen)
                return
            if len(data) <= REPEAT_SIZE and data[:1] == b"{" and data[-1:] == b"}":
                self._candidate = bytes(data)
                self._emitted = 0
        if self._pos:
            self._input = self._input[self._pos :]
            self._pos = 0
        self._input = self._input + data if self._input else bytes(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not lexed yet."""
        return len(self._input) - self._pos

    @property
    def holding(self) -> int:
        """Bytes this parser holds in memory: input, a partial token, a partial message."""
        return len(self._input) + len(self._token) + len(self._text)

    @property
    def in_message(self) -> bool:
        """Has part of a message (a token, or tokens of an unclosed value) been lexed?"""
        return bool(self._count) or self._state not in (IN_START, IN_RECOVERY)

    def next_message(self) -> Message | None:
        """The next complete message, or None when the bytes lexed so far hold none.

        Lexes at most :data:`SLICE` bytes per call: None with :attr:`buffered` non-zero
        means "call again" (after letting others run), not "send more data".
        """
        if not self._out and self._pos < len(self._input):
            self._lex(self._pos + SLICE)
            if self._pos >= len(self._input):
                self._input = b""
                self._pos = 0
                self._remember()
        return self._out.popleft() if self._out else None

    def _remember(self) -> None:
        """The read just consumed was one whole request: remember it (see receive_data)."""
        candidate, self._candidate = self._candidate, None
        if (candidate is not None and self._emitted == 1 and len(self._out) == 1
                and isinstance(self._out[0].value, dict) and self._state == IN_START
                and not self._count):  # fmt: skip
            if len(self._repeats) >= REPEATS:
                self._repeats.clear()
            self._repeats[candidate] = self._out[0]

    def feed(self, data: bytes) -> list[Message]:
        """Receive ``data`` and return every message completed by it."""
        self.receive_data(data)
        out = []
        while True:
            message = self.next_message()
            if message is not None:
                out.append(message)
            elif not self.buffered:
                return out

    def flush(self) -> list[Message]:
        """End of input: finish a pending token (QEMU does this when a client goes away)."""
        out = self.feed(b"")
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
        out.extend(self._out)
        self._out.clear()
        return out

    # -- lexer ----------------------------------------------------------------------

    def _lex(self, stop: int) -> None:
        data = self._input
        pos = self._pos
        end = min(len(data), stop)
        out = self._out
        while pos < end and not out:
            state = self._state
            if state == IN_START:
                match = _START.match(data, pos)
                if match is not None:
                    group = match.lastindex or 0
                    after = match.end()
                    if group == _WS:
                        pos = after
                        continue
                    if group == _OPENERS:
                        pos = self._run(data, pos, after, opening=True)
                        continue
                    if group == _SEPARATORS and self._count:
                        pos = self._run(data, pos, after, opening=False)
                        continue
                    if group in (_SEPARATORS, _CLOSER):
                        self._process(data[pos : pos + 1], _PUNCTUATION[data[pos]])
                        pos += 1
                        continue
                    limit = self.max_size + 1 if group == _STRING else self.max_size
                    if after - pos <= limit:
                        self._process(data[pos:after], _VALUE_TYPES[group])
                        pos = after
                        continue
            elif state in _RUNS:
                match = _RUNS[state].match(data, pos, end)
                if match is not None:
                    pos = self._grow(data, pos, match.end(), state)
                    continue
            self._step(data[pos])
            pos += 1
        self._pos = pos

    def _grow(self, data: bytes, pos: int, after: int, state: int) -> int:
        """Consume a run of bytes that keeps the lexer in ``state``; return the new pos."""
        if state not in _GROWING:
            return after  # error recovery drops what it skips
        token = self._token
        take = min(after - pos, self.max_size + 1 - len(token))
        token += data[pos : pos + take]
        if len(token) > self.max_size:  # QEMU: a single token may not grow without bound
            self._process(bytes(token), state)
            token.clear()
            self._state = IN_START
        return pos + take

    def _step(self, ch: int) -> None:
        """One byte through QEMU's lexer table (``json_lexer_feed_char``)."""
        token = self._token
        consumed = False
        while not consumed:
            nxt = _TABLE[self._state][ch]
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

    # -- streamer -------------------------------------------------------------------

    def _emit(self, message: Message) -> None:
        self._braces = self._brackets = 0
        self._text = bytearray()
        self._count = self._size = 0
        self._emitted += 1
        self._out.append(message)

    def _limit_error(self, length: int) -> str | None:
        """QEMU's checks, in its order, for one more token of ``length`` bytes."""
        if self._size + length + 1 > self.max_size:
            return "JSON token size limit exceeded"
        if self._count + 1 > self.max_tokens:
            return "JSON token count limit exceeded"
        if self._braces + self._brackets > MAX_NESTING:
            return "JSON nesting depth limit exceeded"
        return None

    def _run(self, data: bytes, pos: int, after: int, *, opening: bool) -> int:
        """A run of openers, or of separators inside a message: as many one-byte tokens,
        accounted in one step up to the first that breaks a limit.  Returns the new pos."""
        room_size = self.max_size - self._size - 1
        room_count = self.max_tokens - self._count
        room = min(after - pos, room_size, room_count)
        if opening:
            room = min(room, MAX_NESTING - self._braces - self._brackets)
        room = max(room, 0)
        if room:
            run = data[pos : pos + room]
            self._text += run
            self._count += room
            self._size += room
            if opening:
                braces = run.count(b"{")
                self._braces += braces
                self._brackets += room - braces
        if room < after - pos:  # the next token breaks a limit (or ends the message)
            self._process(data[pos + room : pos + room + 1], _PUNCTUATION[data[pos + room]])
            return pos + room + 1
        return after

    def _process(self, text: bytes, kind: int) -> None:
        """QEMU's ``json_message_process_token``: count brackets, check limits, emit."""
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
            if self._count:
                self._emit(self._parse())
            return
        error = self._limit_error(len(text))
        if error is not None:
            self._emit(Message(error=error))
            return
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            self._text += text
            if kind in _NEEDS_SEPARATOR:
                self._text += b" "
            self._count += 1
            self._size += len(text)
        elif not self._count:  # a message of one token (a scalar, or a stray closer)
            self._emit(self._parse(_Single(kind, text)))
        else:
            self._text += text
            self._emit(self._parse(_Tokens(bytes(self._text))))

    def _parse(self, tokens: _Tokens | _Single | None = None) -> Message:
        try:
            return Message(value=parse_tokens(tokens or _Tokens(bytes(self._text))))
        except _ParseError as exc:
            return Message(error=f"JSON parse error, {exc.args[0]}")


# -- parser ---------------------------------------------------------------------------


class _ParseError(Exception):
    """The first parse error (QEMU keeps only the first); its text is QEMU's."""


Token = tuple[int, bytes]


class _Tokens:
    """The tokens of one stored message, with one token of lookahead."""

    __slots__ = ("_iter", "_next")

    def __init__(self, text: bytes) -> None:
        self._iter = _RELEX.finditer(text)
        self._next = self._advance()

    def _advance(self) -> Token | None:
        match = next(self._iter, None)
        if match is None:
            return None
        group = match.lastindex
        assert group is not None
        return _RELEX_TYPES[group], match.group()

    def peek(self) -> Token | None:
        return self._next

    def pop(self) -> Token | None:
        token = self._next
        if token is not None:
            self._next = self._advance()
        return token


class _Single:
    """The tokens of a message of one token: no need to store and re-read it."""

    __slots__ = ("_next",)

    def __init__(self, kind: int, text: bytes) -> None:
        self._next: Token | None = (kind, text)

    def peek(self) -> Token | None:
        return self._next

    def pop(self) -> Token | None:
        token, self._next = self._next, None
        return token


_NO_KEY: Any = object()
_KEYWORDS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


def parse_tokens(tokens: _Tokens | _Single) -> Any:
    """QEMU's recursive descent (``parse_value``, ``parse_object``, ``parse_pair``,
    ``parse_array``) with an explicit stack: same order of checks, same first error."""
    stack: list[tuple[Any, list[Any]]] = []  # (container, [pending key]) per open value
    while True:
        token = tokens.peek()
        if token is None:
            raise _ParseError("premature EOI")
        kind = token[0]
        if kind in (JSON_LCURLY, JSON_LSQUARE):
            tokens.pop()
            after = tokens.peek()
            if after is None:
                raise _ParseError("premature EOI")
            empty = after[0] == (JSON_RCURLY if kind == JSON_LCURLY else JSON_RSQUARE)
            container: Any = {} if kind == JSON_LCURLY else []
            if not empty:
                stack.append((container, [_NO_KEY]))
                continue
            tokens.pop()
            value = container
        elif kind == JSON_STRING:
            tokens.pop()
            value = _string(token[1])
        elif kind in (JSON_INTEGER, JSON_FLOAT):
            tokens.pop()
            value = _number(token)
        elif kind == JSON_KEYWORD:
            tokens.pop()
            if token[1] not in _KEYWORDS:
                raise _ParseError(f"invalid keyword '{token[1].decode('ascii')}'")
            value = _KEYWORDS[token[1]]
        else:
            raise _ParseError("expecting value")
        # A value is complete: give it to the values that enclose it, closing them as
        # far as the tokens say, until one wants another value.
        while stack:
            container, key = stack[-1]
            if isinstance(container, list):
                container.append(value)
                token = tokens.pop()
                if token is None:
                    raise _ParseError("premature EOI")
                if token[0] == JSON_COMMA:
                    break
                if token[0] != JSON_RSQUARE:
                    raise _ParseError("expected separator in list")
            elif key[0] is _NO_KEY:
                if not isinstance(value, str):
                    raise _ParseError("key is not a string in object")
                token = tokens.pop()
                if token is None:
                    raise _ParseError("premature EOI")
                if token[0] != JSON_COLON:
                    raise _ParseError("missing : in object pair")
                key[0] = value
                break
            else:
                if key[0] in container:
                    raise _ParseError("duplicate key")
                container[key[0]] = value
                key[0] = _NO_KEY
                token = tokens.pop()
                if token is None:
                    raise _ParseError("premature EOI")
                if token[0] == JSON_COMMA:
                    break
                if token[0] != JSON_RCURLY:
                    raise _ParseError("expected separator in dict")
            stack.pop()
            value = container
        else:
            return value


def _number(token: Token) -> int | float:
    text = token[1].decode("ascii")
    if token[0] == JSON_INTEGER:
        number = int(text)
        if -(1 << 63) <= number < (1 << 64):
            return number
    return float(text)


#: Noncharacters, which QEMU's UTF-8 decoder refuses and Python's accepts.
_NONCHARACTER = re.compile(
    "[\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
_SIMPLE_ESCAPES = {
    0x22: '"',
    0x27: "'",
    0x5C: "\\",
    0x2F: "/",
    0x62: "\b",
    0x66: "\f",
    0x6E: "\n",
    0x72: "\r",
    0x74: "\t",
}


def _string(raw: bytes) -> str:
    """A string token's value (QEMU's ``parse_string``)."""
    body = raw[1:-1]
    if b"\\" not in body:
        if body.isascii():
            return body.decode("ascii")
        try:  # Python's strict UTF-8 refuses all that QEMU refuses, but noncharacters
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not _NONCHARACTER.search(text):
                return text
    return _string_slow(raw)


def _string_slow(raw: bytes) -> str:
    quote = raw[0]
    out: list[str] = []
    pos = 1
    while raw[pos] != quote:
        ch = raw[pos]
        if ch == 0x5C:  # backslash
            begin = pos
            esc = raw[pos + 1]
            pos += 2
            simple = _SIMPLE_ESCAPES.get(esc)
            if simple is not None:
                out.append(simple)
                continue
            if esc != 0x75:  # u
                raise _ParseError("invalid escape sequence in string")
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
                raise _ParseError(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
        else:
            cp, pos = utf8.codepoint(raw, pos)
            if cp < 0:
                raise _ParseError("invalid UTF-8 sequence in string")
            out.append(chr(cp))
    return "".join(out)


def _hex4(raw: bytes, pos: int) -> int:
    digits = raw[pos : pos + 4]
    if len(digits) != 4 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)
