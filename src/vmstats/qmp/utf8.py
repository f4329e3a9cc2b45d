"""QEMU's "modified UTF-8" rules (``util/unicode.c``), as its JSON parser applies them.

QEMU rejects surrogates and noncharacters, accepts ``C0 80`` for U+0000, and replaces each
invalid sequence (lead byte plus the continuation bytes that did arrive) with one U+FFFD
when it prints.  Python's codecs differ on all three, hence this small module.
"""

from __future__ import annotations

_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def is_valid_codepoint(cp: int) -> bool:
    if cp > 0x10FFFF or cp < 0:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False  # noncharacter
    return not 0xD800 <= cp <= 0xDFFF  # surrogate


def codepoint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode one code point at ``pos``: (code point or -1, position after it)."""
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    if byte >= 0xFE or not byte & 0x40:
        return -1, pos  # impossible byte, or a continuation byte out of place
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = data[pos] if pos < len(data) else 0
        if nxt & 0xC0 != 0x80:
            return -1, pos
        pos += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not is_valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, pos
    return cp, pos


def decode(data: bytes) -> str | None:
    """Strict decoding; None if any sequence is invalid (QEMU: "invalid UTF-8 sequence")."""
    out = []
    pos = 0
    while pos < len(data):
        cp, pos = codepoint(data, pos)
        if cp < 0:
            return None
        out.append(chr(cp))
    return "".join(out)


def decode_replacing(data: bytes) -> str:
    """Lenient decoding as QEMU's JSON writer prints raw bytes: U+FFFD per bad sequence."""
    out = []
    pos = 0
    while pos < len(data):
        cp, pos = codepoint(data, pos)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)
