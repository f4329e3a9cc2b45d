"""QEMU's JSON parser (``qobject/json-parser.c``) over the token text of one message,
with an explicit stack instead of recursion (1,024 levels of nesting are allowed), and
QEMU's string and number rules and error texts."""

from __future__ import annotations

import re
from typing import Any

from vmstats.qmp import utf8
from vmstats.qmp.jsonstream.lexer import (
    JSON_COLON,
    JSON_COMMA,
    JSON_FLOAT,
    JSON_INTEGER,
    JSON_KEYWORD,
    JSON_LCURLY,
    JSON_LSQUARE,
    JSON_RCURLY,
    JSON_RSQUARE,
    JSON_STRING,
)
from vmstats.qmp.jsonstream.runs import RELEX, RELEX_TYPES


class ParseError(Exception):
    """The first parse error (QEMU keeps only the first); its text is QEMU's."""


Token = tuple[int, bytes]


class Tokens:
    """The tokens of one stored message, with one token of lookahead."""

    __slots__ = ("_iter", "_next")

    def __init__(self, text: bytes) -> None:
        self._iter = RELEX.finditer(text)
        self._next = self._advance()

    def _advance(self) -> Token | None:
        match = next(self._iter, None)
        if match is None:
            return None
        group = match.lastindex
        assert group is not None
        return RELEX_TYPES[group], match.group()

    def peek(self) -> Token | None:
        return self._next

    def pop(self) -> Token | None:
        token = self._next
        if token is not None:
            self._next = self._advance()
        return token


class SingleToken:
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


def parse_tokens(tokens: Tokens | SingleToken) -> Any:
    """QEMU's recursive descent (``parse_value``, ``parse_object``, ``parse_pair``,
    ``parse_array``) with an explicit stack: same order of checks, same first error."""
    stack: list[tuple[Any, list[Any]]] = []  # (container, [pending key]) per open value
    while True:
        value = _next_value(tokens, stack)
        if value is _OPENED:
            continue
        # A value is complete: give it to the values that enclose it, closing them as
        # far as the tokens say, until one wants another value.
        while stack:
            container, key = stack[-1]
            if isinstance(container, list):
                closed = _in_list(container, value, tokens)
            else:
                closed = _in_object(container, key, value, tokens)
            if not closed:
                break
            stack.pop()
            value = container
        else:
            return value


#: What :func:`_next_value` gives when it opened a container whose first value follows.
_OPENED: Any = object()


def _next_value(tokens: Tokens | SingleToken, stack: list[tuple[Any, list[Any]]]) -> Any:
    """The value that starts at the next token (``parse_value``); an empty container is a
    value, a non-empty one is pushed on ``stack`` (:data:`_OPENED`)."""
    token = _peek(tokens)
    kind = token[0]
    if kind in (JSON_LCURLY, JSON_LSQUARE):
        tokens.pop()
        after = _peek(tokens)
        container: Any = {} if kind == JSON_LCURLY else []
        if after[0] != (JSON_RCURLY if kind == JSON_LCURLY else JSON_RSQUARE):
            stack.append((container, [_NO_KEY]))
            return _OPENED
        tokens.pop()
        return container
    if kind == JSON_STRING:
        tokens.pop()
        return _string(token[1])
    if kind in (JSON_INTEGER, JSON_FLOAT):
        tokens.pop()
        return _number(token)
    if kind == JSON_KEYWORD:
        tokens.pop()
        if token[1] not in _KEYWORDS:
            raise ParseError(f"invalid keyword '{token[1].decode('ascii')}'")
        return _KEYWORDS[token[1]]
    raise ParseError("expecting value")


def _in_list(container: list[Any], value: Any, tokens: Tokens | SingleToken) -> bool:
    """Add an element (``parse_array``); True if the list closes after it."""
    container.append(value)
    return _closes(tokens, JSON_RSQUARE, "expected separator in list")


def _in_object(container: dict[str, Any], key: list[Any], value: Any,
               tokens: Tokens | SingleToken) -> bool:  # fmt: skip
    """Take a key, or the value of the pending key (``parse_pair``); True if the object
    closes after it."""
    if key[0] is _NO_KEY:
        if not isinstance(value, str):
            raise ParseError("key is not a string in object")
        if _pop(tokens)[0] != JSON_COLON:
            raise ParseError("missing : in object pair")
        key[0] = value
        return False
    if key[0] in container:
        raise ParseError("duplicate key")
    container[key[0]] = value
    key[0] = _NO_KEY
    return _closes(tokens, JSON_RCURLY, "expected separator in dict")


def _closes(tokens: Tokens | SingleToken, closer: int, error: str) -> bool:
    """After a member: a comma (another follows: False) or the container's closer (True);
    anything else is QEMU's ``error``."""
    token = _pop(tokens)
    if token[0] == JSON_COMMA:
        return False
    if token[0] != closer:
        raise ParseError(error)
    return True


def _peek(tokens: Tokens | SingleToken) -> Token:
    token = tokens.peek()
    if token is None:
        raise ParseError("premature EOI")
    return token


def _pop(tokens: Tokens | SingleToken) -> Token:
    token = tokens.pop()
    if token is None:
        raise ParseError("premature EOI")
    return token


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
    return string_slow(raw)


def string_slow(raw: bytes) -> str:
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
                raise ParseError("invalid escape sequence in string")
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
                raise ParseError(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
        else:
            cp, pos = utf8.codepoint(raw, pos)
            if cp < 0:
                raise ParseError("invalid UTF-8 sequence in string")
            out.append(chr(cp))
    return "".join(out)


def _hex4(raw: bytes, pos: int) -> int:
    digits = raw[pos : pos + 4]
    if len(digits) != 4 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)
