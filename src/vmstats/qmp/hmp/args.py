"""HMP argument parsing, as QEMU's monitor does it: words and quoted strings (``get_str``)
and integer expressions (``get_expr``), with QEMU's messages.  No CPU registers exist
here, so ``$reg`` is "unknown register"."""

from __future__ import annotations

import operator
from collections.abc import Callable

SPACE = " \t\n\v\f\r"


class ExprError(Exception):
    """An expression could not be evaluated; the text is QEMU's message."""


def get_str(text: str, pos: int) -> tuple[str | None, int]:
    """QEMU's ``get_str``: a word or a double-quoted string.  (None, pos) on failure."""
    while pos < len(text) and text[pos] in SPACE:
        pos += 1
    if pos >= len(text):
        return None, pos
    out = []
    if text[pos] == '"':
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\":
                pos += 1
                c = text[pos] if pos < len(text) else ""
                pos += 1
                mapped = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}.get(c)
                if mapped is None:
                    return None, pos
                out.append(mapped)
            else:
                out.append(text[pos])
                pos += 1
        if pos >= len(text):
            return None, pos  # unterminated string
        pos += 1
    else:
        while pos < len(text) and text[pos] not in SPACE:
            out.append(text[pos])
            pos += 1
    return "".join(out)[:1023], pos


class Expr:
    """QEMU's monitor expression evaluator (``get_expr``), without CPU registers."""

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def _ch(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self._ch() and self._ch() in SPACE:
            self.pos += 1

    def _next(self) -> None:
        if self._ch():
            self.pos += 1
            self.skip_space()

    def unary(self) -> int:
        ch = self._ch()
        if ch == "+":
            self._next()
            return self.unary()
        if ch == "-":
            self._next()
            return -self.unary()
        if ch == "~":
            self._next()
            return ~self.unary()
        if ch == "(":
            self._next()
            value = self.sum()
            if self._ch() != ")":
                raise ExprError("')' expected")
            self._next()
            return value
        if ch == "'":
            self.pos += 1
            if not self._ch():
                raise ExprError("character constant expected")
            value = ord(self._ch())
            self.pos += 1
            if self._ch() != "'":
                raise ExprError("missing terminating ' character")
            self._next()
            return value
        if ch == "$":
            raise ExprError("unknown register")
        if not ch:
            raise ExprError("unexpected end of expression")
        return self._number()

    def _number(self) -> int:
        rest = self.text[self.pos :]
        digits = "0123456789"
        base = 10
        start = 0
        if rest[:2].lower() == "0x" and len(rest) > 2 and rest[2] in "0123456789abcdefABCDEF":
            base, start, digits = 16, 2, "0123456789abcdefABCDEF"
        elif rest[:1] == "0":
            base, digits = 8, "01234567"
        end = start
        while end < len(rest) and rest[end] in digits:
            end += 1
        if end == 0:
            raise ExprError(f"invalid char '{rest[0]}' in expression")
        value = int(rest[start:end] or "0", base)
        if value >= 1 << 64:
            raise ExprError("number too large")
        self.pos += end
        self.skip_space()
        return value

    def _binary(self, operand: Callable[[], int], ops: str) -> int:
        value = operand()
        while self._ch() and self._ch() in ops:
            op = self._ch()
            self._next()
            other = operand()
            if op in "/%" and other == 0:
                raise ExprError("division by zero")
            value = _OPERATORS[op](value, other)
        return value

    def prod(self) -> int:
        return self._binary(self.unary, "*/%")

    def logic(self) -> int:
        return self._binary(self.prod, "&|^")

    def sum(self) -> int:
        return self._binary(self.logic, "+-")


def _c_div(a: int, b: int) -> int:
    """C division: truncates toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


_OPERATORS: dict[str, Callable[[int, int], int]] = {
    "*": operator.mul,
    "/": _c_div,
    "%": lambda a, b: a - b * _c_div(a, b),
    "&": operator.and_,
    "|": operator.or_,
    "^": operator.xor,
    "+": operator.add,
    "-": operator.sub,
}


def to_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
