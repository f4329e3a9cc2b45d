"""Key order of QEMU's QDict, which fixes the order of keys in every JSON object QEMU writes.

A QDict is a 512-bucket hash table keyed by ``tdb_hash``; new keys go to the head of their
bucket and iteration walks buckets in ascending order.  So the order of an object's keys on
the wire depends on the hash of the keys and, within one bucket, on reverse insertion order.
Reproducing it once here gives QEMU's order for any object (responses, greeting, errors)
without a hand-kept list per type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

QDICT_BUCKET_MAX = 512
_U32 = 0xFFFFFFFF

V = TypeVar("V")


@lru_cache(maxsize=4096)
def tdb_hash(key: str) -> int:
    """QEMU's ``tdb_hash()`` of a key, over its UTF-8 bytes, in 32-bit unsigned arithmetic."""
    data = key.encode("utf-8", "surrogatepass")
    value = (0x238F13AF * len(data)) & _U32
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & _U32
    return (1103515243 * value + 12345) & _U32


def qdict_bucket(key: str) -> int:
    """The bucket a key lands in."""
    return tdb_hash(key) % QDICT_BUCKET_MAX


def qdict_order(keys: Iterable[str]) -> list[str]:
    """Keys in QEMU's iteration order, given the order they were inserted.

    A key inserted twice keeps its first position (QEMU replaces the value in place).
    """
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    return sorted(first, key=lambda k: (qdict_bucket(k), -first[k]))


def qdict(items: Mapping[str, V] | Iterable[tuple[str, V]]) -> dict[str, V]:
    """A Python dict whose iteration order is that of the QDict QEMU would build.

    ``items`` are given in insertion order (the order QEMU's code calls ``qdict_put``).
    """
    pairs = dict(items.items() if isinstance(items, Mapping) else items)
    return {key: pairs[key] for key in qdict_order(pairs)}


def qdict_parsed(value: Any) -> Any:
    """A parsed JSON value as QEMU's parser stores it: every object a QDict, keys inserted
    in textual order.  This is how QEMU echoes a request's ``id``.

    Iterative: a client may nest 1,024 levels deep (QEMU's limit), deeper than Python
    recursion goes.  Each container is created in place, in order, then filled.
    """
    out = _shell(value)
    todo = [(value, out)] if out is not value else []
    while todo:
        source, target = todo.pop()
        items = (
            ((key, source[key]) for key in qdict_order(source))
            if isinstance(source, dict)
            else enumerate(source)
        )
        for key, child in items:
            copy = _shell(child)
            if isinstance(target, dict):
                target[key] = copy
            else:
                target.append(copy)
            if copy is not child:
                todo.append((child, copy))
    return out


def _shell(value: Any) -> Any:
    """An empty container of the same kind, or the value itself when it is no container."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return []
    return value


def qdict_deep(value: Any) -> Any:
    """Put every object inside a JSON value into QDict bucket order, recursively.

    Keys sharing a bucket keep their relative order, so a value read off QEMU's wire comes
    out unchanged; use :func:`qdict` instead when the insertion order is known.
    """
    if isinstance(value, dict):
        return {k: qdict_deep(value[k]) for k in sorted(value, key=qdict_bucket)}
    if isinstance(value, list):
        return [qdict_deep(v) for v in value]
    return value
