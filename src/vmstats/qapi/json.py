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
    for those values alone.
    """
    if isinstance(value, float):
        return f"{value:.17g}"
    if isinstance(value, dict):
        items = ", ".join(f"{dumps(k)}: {dumps_exact(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps_exact(v) for v in value) + "]"
    return dumps(value)
