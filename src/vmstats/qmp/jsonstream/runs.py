"""Runs of bytes the lexer consumes in one step, as regular expressions derived from its
table (:mod:`.lexer`): whole tokens from the start state, the body of a string, digits,
junk in error recovery.  What makes the streamer fast: the table is consulted byte by
byte only at the edges of a read."""

from __future__ import annotations

import re

from vmstats.qmp.jsonstream.lexer import (
    IN_DIGITS,
    IN_DQ_STRING,
    IN_DQ_STRING_ESCAPE,
    IN_EXP_DIGITS,
    IN_KEYWORD,
    IN_MANTISSA_DIGITS,
    IN_RECOVERY,
    IN_SQ_STRING,
    IN_SQ_STRING_ESCAPE,
    JSON_COLON,
    JSON_COMMA,
    JSON_ERROR,
    JSON_FLOAT,
    JSON_INTEGER,
    JSON_KEYWORD,
    JSON_LCURLY,
    JSON_LSQUARE,
    JSON_RCURLY,
    JSON_RSQUARE,
    JSON_STRING,
    TABLE,
)


def byte_class(state: int, target: int | None = None) -> bytes:
    """A regex class of the bytes that take the lexer from ``state`` to ``target``
    (by default back to ``state``: its self-loops)."""
    target = state if target is None else target
    members = [ch for ch in range(256) if TABLE[state][ch] == target]
    return b"[" + b"".join(re.escape(bytes([ch])) for ch in members) + b"]"


#: Runs of bytes that leave the lexer in the same state, per state: consumed in one step.
RUNS = {
    state: re.compile(byte_class(state) + b"+")
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
GROWING = frozenset(RUNS) - {IN_RECOVERY}

_DQ_BODY = byte_class(IN_DQ_STRING) + b"|\\\\" + byte_class(IN_DQ_STRING_ESCAPE, IN_DQ_STRING)
_SQ_BODY = byte_class(IN_SQ_STRING) + b"|\\\\" + byte_class(IN_SQ_STRING_ESCAPE, IN_SQ_STRING)
_INT = rb"(?:0|[1-9][0-9]*)"
#: Complete tokens from the start state.  Numbers and keywords end where the next byte
#: cannot continue them (QEMU's lookahead), so they match only when that byte is here.
WS, OPENERS, SEPARATORS, CLOSER, STRING, FLOAT, INTEGER, KEYWORD = range(1, 9)
START = re.compile(
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

VALUE_TYPES = {
    STRING: JSON_STRING,
    FLOAT: JSON_FLOAT,
    INTEGER: JSON_INTEGER,
    KEYWORD: JSON_KEYWORD,
}

#: Tokens of a stored message, which are all complete and valid: every number and keyword
#: is followed by one space, so the groups below are unambiguous.  Group = token type.
RELEX = re.compile(
    rb"(\{)|(\})|(\[)|(\])|(:)|(,)|(-?[0-9]+(?= ))|(-?[0-9][-+.0-9eE]*)|([a-z]+)"
    rb'|("[^"\\]*(?:\\.[^"\\]*)*"|\'[^\'\\]*(?:\\.[^\'\\]*)*\')',
    re.DOTALL,
)
RELEX_TYPES = (
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
NEEDS_SEPARATOR = frozenset((JSON_INTEGER, JSON_FLOAT, JSON_KEYWORD))
