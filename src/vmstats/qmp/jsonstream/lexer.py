"""QEMU's JSON lexer (``qobject/json-lexer.c``) as data: its token types, its states and
its transition table, byte by byte.  The streamer drives bytes through it; the runs it
matches in one step are derived from it (:mod:`.runs`), so they cannot disagree."""

from __future__ import annotations

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


PUNCTUATION = {
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
    for ch, token in PUNCTUATION.items():
        table[IN_START][ch] = token
    chars(IN_START, "abcdefghijklmnopqrstuvwxyz", IN_KEYWORD)
    chars(IN_START, " \t\r\n", IN_START)
    return table


TABLE = _build_table()
