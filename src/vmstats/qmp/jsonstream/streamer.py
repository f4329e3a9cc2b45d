"""The streamer (``qobject/json-streamer.c``): bytes in, complete messages out, in
bounded memory and bounded work per call (see the package's docstring)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from vmstats.qmp import utf8
from vmstats.qmp.jsonstream.lexer import (
    IN_RECOVERY,
    IN_START,
    JSON_END_OF_INPUT,
    JSON_ERROR,
    JSON_LCURLY,
    JSON_LSQUARE,
    JSON_MIN,
    JSON_RCURLY,
    JSON_RSQUARE,
    LOOKAHEAD,
    PUNCTUATION,
    TABLE,
)
from vmstats.qmp.jsonstream.parser import ParseError, SingleToken, Tokens, parse_tokens
from vmstats.qmp.jsonstream.runs import (
    CLOSER,
    GROWING,
    NEEDS_SEPARATOR,
    OPENERS,
    RUNS,
    SEPARATORS,
    START,
    STRING,
    VALUE_TYPES,
    WS,
)

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
#: Repeated reads remembered per parser, the largest remembered, and the most requests
#: one may hold (``top`` writes its two queries to a VM in one write).
REPEATS = 32
REPEAT_SIZE = 4096
REPEAT_MESSAGES = 8


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
        self._repeats: dict[bytes, tuple[Message, ...]] = {}
        self._candidate: bytes | None = None
        self._emitted: list[Message] = []  # the messages of the candidate read so far

    # -- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Queue bytes for lexing (nothing is lexed until :meth:`next_message`).

        Polling clients send the same requests again and again, in one write each time.
        A read that arrives when nothing is pending and is exactly requests seen before
        (the same bytes, from the same idle state: so the same tokens and the same
        messages) is answered from memory instead of being lexed and parsed again.
        """
        idle = not self._input and self._state == IN_START and not self._count and not self._out
        self._candidate = None
        if idle:
            seen = self._repeats.get(data)
            if seen is not None:
                self._out.extend(seen)
                return
            if len(data) <= REPEAT_SIZE and data[:1] == b"{" and data[-1:] == b"}":
                self._candidate = bytes(data)
                self._emitted = []
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
        """The read just lexed was whole requests: remember them (see receive_data).
        Only reads of requests (objects) and nothing else: no error, no value cut at
        the read's end."""
        candidate, self._candidate = self._candidate, None
        emitted, self._emitted = self._emitted, []
        if (candidate is not None and 0 < len(emitted) <= REPEAT_MESSAGES
                and all(isinstance(m.value, dict) and m.error is None for m in emitted)
                and self._state == IN_START and not self._count):  # fmt: skip
            if len(self._repeats) >= REPEATS:
                self._repeats.clear()
            self._repeats[candidate] = tuple(emitted)

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
                match = START.match(data, pos)
                if match is not None:
                    group = match.lastindex or 0
                    after = match.end()
                    if group == WS:
                        pos = after
                        continue
                    if group == OPENERS:
                        pos = self._run(data, pos, after, opening=True)
                        continue
                    if group == SEPARATORS and self._count:
                        pos = self._run(data, pos, after, opening=False)
                        continue
                    if group in (SEPARATORS, CLOSER):
                        self._process(data[pos : pos + 1], PUNCTUATION[data[pos]])
                        pos += 1
                        continue
                    limit = self.max_size + 1 if group == STRING else self.max_size
                    if after - pos <= limit:
                        self._process(data[pos:after], VALUE_TYPES[group])
                        pos = after
                        continue
            elif state in RUNS:
                match = RUNS[state].match(data, pos, end)
                if match is not None:
                    pos = self._grow(data, pos, match.end(), state)
                    continue
            self._step(data[pos])
            pos += 1
        self._pos = pos

    def _grow(self, data: bytes, pos: int, after: int, state: int) -> int:
        """Consume a run of bytes that keeps the lexer in ``state``; return the new pos."""
        if state not in GROWING:
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
            nxt = TABLE[self._state][ch]
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
        if self._candidate is not None and len(self._emitted) <= REPEAT_MESSAGES:
            self._emitted.append(message)
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
            self._process(data[pos + room : pos + room + 1], PUNCTUATION[data[pos + room]])
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
            if kind in NEEDS_SEPARATOR:
                self._text += b" "
            self._count += 1
            self._size += len(text)
        elif not self._count:  # a message of one token (a scalar, or a stray closer)
            self._emit(self._parse(SingleToken(kind, text)))
        else:
            self._text += text
            self._emit(self._parse(Tokens(bytes(self._text))))

    def _parse(self, tokens: Tokens | SingleToken | None = None) -> Message:
        try:
            return Message(value=parse_tokens(tokens or Tokens(bytes(self._text))))
        except ParseError as exc:
            return Message(error=f"JSON parse error, {exc.args[0]}")
