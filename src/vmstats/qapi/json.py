"""JSON text exactly as QEMU's JSON writer produces it.

QEMU separates with ``", "`` and ``": "``, and escapes every code point below 0x20 or from
0x7F up as ``\\uXXXX`` with *upper-case* hex (surrogate pairs beyond the BMP).  Python's
encoder, with ``ensure_ascii``, differs only in the case of the hex digits and in leaving
0x7F alone, so its output is patched in those two places; keys must already be in QDict
order (:mod:`.qdict`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "), allow_nan=False)
_LOWER_HEX_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")


def _upper(match: re.Match[str]) -> str:
    return f"{match.group(1)}\\u{match.group(2).upper()}"


class RawJSON(str):
    """Text that is already JSON as QEMU writes it: written out as it is."""

    __slots__ = ()


def dumps(value: Any) -> str:
    """``value`` as QEMU would write it (compact form, no trailing newline).

    Fast (C encoder); for values that may hold floats use :func:`dumps_exact`.
    """
    if isinstance(value, RawJSON):
        return str(value)
    text = _ENCODER.encode(value)
    if "\\u" in text:
        text = _LOWER_HEX_ESCAPE.sub(_upper, text)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007F")
    return text


def dumps_exact(value: Any) -> str:
    """Like :func:`dumps`, with floats printed as QEMU does (``%.17g``, even ``inf``).

    Floats only reach us from clients (an ``id`` echoed back), so this slower path is used
    for those values alone.  Iterative: an ``id`` may be nested 1,024 levels deep.
    """
    parts: list[str] = []
    # Each entry: the items still to write in an open container, and what closes it.
    stack: list[tuple[Iterator[tuple[str | None, Any]], str]] = [(iter(((None, value),)), "")]
    first = True
    while stack:
        items, closer = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            parts.append(closer)
            first = False
            continue
        key, child = item
        if not first:
            parts.append(", ")
        first = False
        if key is not None:
            parts.append(dumps(key) + ": ")
        if isinstance(child, dict):
            parts.append("{")
            stack.append((iter(child.items()), "}"))
            first = True
        elif isinstance(child, list):
            parts.append("[")
            stack.append((((None, v) for v in child), "]"))
            first = True
        elif isinstance(child, float):
            parts.append(f"{child:.17g}")
        else:
            parts.append(dumps(child))
    return "".join(parts)
