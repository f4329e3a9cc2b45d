"""Iteration order of a GLib ``GHashTable`` of strings (GLib 2.74, as in Debian 12).

QEMU's input visitor records the keys of each JSON object in a GHashTable, removes each key
it visits, and reports the *first key left in the table* as "Parameter '...' is unexpected".
When a client sends several unknown keys, which one QEMU names is decided by this table,
so matching QEMU's error text byte for byte needs the same table: ``g_str_hash``, the
``hash * 11 % prime`` index, quadratic probing, tombstones and the same resize points.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_MIN_SHIFT = 3
_UNUSED, _TOMBSTONE = 0, 1
# GLib's prime_mod table, indexed by shift.
_PRIME_MOD = (
    1,
    2,
    3,
    7,
    13,
    31,
    61,
    127,
    251,
    509,
    1021,
    2039,
    4093,
    8191,
    16381,
    32749,
    65521,
    131071,
    262139,
    524287,
    1048573,
    2097143,
    4194301,
    8388593,
    16777213,
    33554393,
    67108859,
    134217689,
    268435399,
    536870909,
    1073741789,
    2147483647,
)


def g_str_hash(key: str) -> int:
    """GLib's ``g_str_hash``: djb2 over *signed* chars, 32-bit."""
    h = 5381
    for byte in key.encode("utf-8", "surrogatepass"):
        signed = byte - 256 if byte > 127 else byte
        h = (h * 33 + signed) & 0xFFFFFFFF
    return h


class StrHashSet:
    """A GHashTable used as a set of strings, with GLib's slot layout."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._set_shift(_MIN_SHIFT)
        self._keys: list[str | None] = [None] * self._size
        self._hashes = [_UNUSED] * self._size
        self._nnodes = 0
        self._noccupied = 0
        for key in keys:
            self.add(key)

    def _set_shift(self, shift: int) -> None:
        self._size = 1 << shift
        self._mod = _PRIME_MOD[shift]
        self._mask = self._size - 1

    @staticmethod
    def _hash(key: str) -> int:
        h = g_str_hash(key)
        return 2 if h < 2 else h

    def _lookup(self, key: str, h: int) -> tuple[int, bool]:
        index = (h * 11) % self._mod
        step = 0
        tombstone: int | None = None
        while self._hashes[index] != _UNUSED:
            node_hash = self._hashes[index]
            if node_hash == h and self._keys[index] == key:
                return index, True
            if node_hash == _TOMBSTONE and tombstone is None:
                tombstone = index
            step += 1
            index = (index + step) & self._mask
        return (tombstone if tombstone is not None else index), False

    def add(self, key: str) -> None:
        h = self._hash(key)
        index, found = self._lookup(key, h)
        if found:
            return
        was_unused = self._hashes[index] == _UNUSED
        self._hashes[index] = h
        self._keys[index] = key
        self._nnodes += 1
        if was_unused:
            self._noccupied += 1
            self._maybe_resize()

    def discard(self, key: str) -> None:
        index, found = self._lookup(key, self._hash(key))
        if not found:
            return
        self._hashes[index] = _TOMBSTONE
        self._keys[index] = None
        self._nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        size = self._size
        if (size > self._nnodes * 4 and size > 1 << _MIN_SHIFT) or (
            size <= self._noccupied + self._noccupied // 16
        ):
            self._resize()

    def _resize(self) -> None:
        live = [
            (k, h) for k, h in zip(self._keys, self._hashes, strict=True) if h > 1 and k is not None
        ]
        target = int(self._nnodes * 1.333)
        shift = max(target.bit_length(), _MIN_SHIFT)
        self._set_shift(shift)
        self._keys = [None] * self._size
        self._hashes = [_UNUSED] * self._size
        self._noccupied = self._nnodes = 0
        # GLib rehashes in place; with no tombstones left, re-inserting in old slot order
        # yields the same slots except in rare displacement chains.
        for key, h in live:
            index, _ = self._lookup(key, h)
            self._hashes[index] = h
            self._keys[index] = key
            self._nnodes += 1
            self._noccupied += 1

    def __iter__(self) -> Iterator[str]:
        for key, h in zip(self._keys, self._hashes, strict=True):
            if h > 1 and key is not None:
                yield key

    def __len__(self) -> int:
        return self._nnodes

    def first(self) -> str | None:
        """The key ``g_hash_table_iter_next`` returns first, or None when empty."""
        return next(iter(self), None)
