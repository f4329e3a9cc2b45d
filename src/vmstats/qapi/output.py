"""Encode model values into JSON-ready Python values, with QEMU's key order.

The equivalent of QEMU's output visitor plus its QDict: members are visited in schema
order, absent optionals are left out, and each object's keys come out in the order QEMU's
QDict iterates them (:mod:`.qdict`).  The order of every object type is computed once.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from vmstats.qapi.qdict import qdict_bucket
from vmstats.qapi.schema import (
    NULL,
    AlternateType,
    ArrayType,
    BuiltinType,
    EnumType,
    Member,
    ObjectType,
    Schema,
)
from vmstats.qapi.visitor import json_kind


def _python_kind(value: Any) -> str:
    if isinstance(value, Enum):
        return "str"
    if isinstance(value, tuple):
        return "list"
    if not isinstance(value, dict | list | str | bool | int | float) and value is not None:
        return "dict"  # a bound model object
    return json_kind(value)


class OutputEncoder:
    """Turns model objects of one schema into JSON-ready values in QEMU's key order."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._order_cache: dict[tuple[str, str | None], tuple[Member, ...]] = {}

    def _ordered(self, type_name: str, tag: str | None) -> tuple[Member, ...]:
        """Members of an object type (for one variant) in QDict order, computed once."""
        key = (type_name, tag)
        cached = self._order_cache.get(key)
        if cached is None:
            cached = self._order_cache[key] = self._ordered_members(type_name, tag)
        return cached

    def _ordered_members(self, type_name: str, tag: str | None) -> tuple[Member, ...]:
        typ = self.schema.lookup(type_name)
        assert isinstance(typ, ObjectType)
        members = self.schema.object_members(typ, tag)
        index = {m.name: i for i, m in enumerate(members)}
        return tuple(sorted(members, key=lambda m: (qdict_bucket(m.name), -index[m.name])))

    def encode(self, type_name: str, value: Any) -> Any:
        typ = self.schema.lookup(type_name)
        if isinstance(typ, BuiltinType):
            return value
        if isinstance(typ, EnumType):
            return value.value if isinstance(value, Enum) else value
        if isinstance(typ, ArrayType):
            return [self.encode(typ.element, item) for item in value]
        if isinstance(typ, AlternateType):
            kind = _python_kind(value)
            for branch in typ.branches:
                if self.schema.json_kind(branch.type) == kind:
                    return self.encode(branch.type, value)
            raise TypeError(f"{type(value).__name__} fits no branch of {typ.name}")
        return self._object(typ, value)

    def _object(self, typ: ObjectType, value: Any) -> dict[str, Any]:
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            # a plain tuple stands for a struct, member by member (e.g. ``(name, value)``)
            value = dict(zip((m.attr for m in typ.members), value, strict=True))
        source = value

        def get(member: Member) -> Any:
            if isinstance(source, dict):  # keyed by wire name, or by Python name
                return source.get(member.name, source.get(member.attr))
            return getattr(source, member.attr, None)

        tag = None
        if typ.discriminator is not None:
            discriminator = next(m for m in typ.members if m.name == typ.discriminator)
            raw = get(discriminator)
            tag = raw.value if isinstance(raw, Enum) else raw
        out: dict[str, Any] = {}
        for member in self._ordered(typ.name, tag):
            item = get(member)
            if item is None and member.optional:
                continue
            out[member.name] = None if item is NULL else self.encode(member.type, item)
        return out
