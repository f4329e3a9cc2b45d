"""Encode model values for the wire, with QEMU's key order, compiled once per type.

The equivalent of QEMU's output visitor plus its QDict: members are visited in schema
order, absent optionals are left out, and each object's keys come out in the order QEMU's
QDict iterates them (:mod:`.qdict`).  Two forms:

- :meth:`OutputEncoder.encode` gives JSON-ready Python values (for tests and tools);
- :meth:`OutputEncoder.encode_text` writes QEMU's JSON text directly, and splices text a
  value already carries (any object with ``__qmp_json__()``, such as the KVM provider's
  pre-encoded stats lists), which is what keeps big replies cheap.

Both are compiled per type into closures on first use: the schema is walked once, not
once per value.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from vmstats.qapi.json import dumps, dumps_exact
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

Encode = Callable[[Any], Any]
EncodeText = Callable[[Any], str]


def _python_kind(value: Any) -> str:
    if isinstance(value, Enum):
        return "str"
    if isinstance(value, tuple) or hasattr(value, "__qmp_json__"):
        return "list"
    if not isinstance(value, dict | list | str | bool | int | float) and value is not None:
        return "dict"  # a bound model object
    return json_kind(value)


def _member_getter(typ: ObjectType, member: Member, position: int) -> Callable[[Any], Any]:
    """Reads one member from a model object, a dict (wire or Python keys) or a plain tuple."""
    attr, name = member.attr, member.name

    def get(value: Any) -> Any:
        if isinstance(value, dict):
            return value.get(name, value.get(attr))
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return value[position]
        return getattr(value, attr, None)

    return get


def _text_int(value: Any) -> str:
    return str(int(value))


def _text_bool(value: Any) -> str:
    return "true" if value else "false"


class OutputEncoder:
    """Turns model objects of one schema into wire values or text, in QEMU's key order."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._order_cache: dict[tuple[str, str | None], tuple[Member, ...]] = {}
        self._value: dict[str, Encode] = {}
        self._text: dict[str, EncodeText] = {}

    # -- public ---------------------------------------------------------------------

    def encode(self, type_name: str, value: Any) -> Any:
        """``value`` as JSON-ready Python values (dicts in QDict order)."""
        return self._value_encoder(type_name)(value)

    def encode_text(self, type_name: str, value: Any) -> str:
        """``value`` as QEMU's JSON text."""
        return self._text_encoder(type_name)(value)

    def ordered(self, type_name: str, tag: str | None = None) -> tuple[Member, ...]:
        """Members of an object type (for one variant) in QDict order, computed once."""
        key = (type_name, tag)
        cached = self._order_cache.get(key)
        if cached is None:
            typ = self.schema.lookup(type_name)
            assert isinstance(typ, ObjectType)
            members = self.schema.object_members(typ, tag)
            index = {m.name: i for i, m in enumerate(members)}
            cached = tuple(sorted(members, key=lambda m: (qdict_bucket(m.name), -index[m.name])))
            self._order_cache[key] = cached
        return cached

    # -- compilation ----------------------------------------------------------------

    def _value_encoder(self, type_name: str) -> Encode:
        found = self._value.get(type_name)
        if found is None:
            # placeholder first: recursive types resolve through the cache at call time
            self._value[type_name] = lambda v: self._value[type_name](v)
            found = self._value[type_name] = self._compile(type_name, text=False)
        return found

    def _text_encoder(self, type_name: str) -> EncodeText:
        found = self._text.get(type_name)
        if found is None:
            self._text[type_name] = lambda v: self._text[type_name](v)
            found = self._text[type_name] = self._compile(type_name, text=True)
        return found

    def _sub(self, type_name: str, text: bool) -> Callable[[Any], Any]:
        return self._text_encoder(type_name) if text else self._value_encoder(type_name)

    def _compile(self, type_name: str, text: bool) -> Callable[[Any], Any]:
        typ = self.schema.lookup(type_name)
        if isinstance(typ, BuiltinType):
            return self._builtin(typ, text)
        if isinstance(typ, EnumType):
            return self._enum(text)
        if isinstance(typ, ArrayType):
            return self._array(typ, text)
        if isinstance(typ, AlternateType):
            return self._alternate(typ, text)
        return self._object(typ, text)

    @staticmethod
    def _builtin(typ: BuiltinType, text: bool) -> Callable[[Any], Any]:
        if not text:
            return lambda v: None if v is NULL else v
        return {
            "string": dumps,
            "int": _text_int,
            "boolean": _text_bool,
            "number": dumps_exact,
            "null": lambda v: "null",
        }.get(typ.json_type, dumps_exact)

    @staticmethod
    def _enum(text: bool) -> Callable[[Any], Any]:
        def plain(v: Any) -> Any:
            return v.value if isinstance(v, Enum) else v

        return (lambda v: dumps(plain(v))) if text else plain

    def _array(self, typ: ArrayType, text: bool) -> Callable[[Any], Any]:
        element = self._sub(typ.element, text)
        if not text:
            return lambda v: [element(item) for item in v]

        def encode(v: Any) -> str:
            raw = getattr(v, "__qmp_json__", None)
            if raw is not None:
                return str(raw())
            return "[" + ", ".join(map(element, v)) + "]"

        return encode

    def _alternate(self, typ: AlternateType, text: bool) -> Callable[[Any], Any]:
        branches = {self.schema.json_kind(b.type): self._sub(b.type, text) for b in typ.branches}

        def encode(v: Any) -> Any:
            branch = branches.get(_python_kind(v))
            if branch is None:
                raise TypeError(f"{type(v).__name__} fits no branch of {typ.name}")
            return branch(v)

        return encode

    def _object(self, typ: ObjectType, text: bool) -> Callable[[Any], Any]:
        declared = {m.name: i for i, m in enumerate(typ.members)}
        plans: dict[
            str | None, list[tuple[str, Callable[[Any], Any], bool, Callable[[Any], Any]]]
        ] = {}

        def plan(
            tag: str | None,
        ) -> list[tuple[str, Callable[[Any], Any], bool, Callable[[Any], Any]]]:
            found = plans.get(tag)
            if found is None:
                found = plans[tag] = [
                    (
                        f"{dumps(m.name)}: " if text else m.name,
                        _member_getter(typ, m, declared.get(m.name, 0)),
                        m.optional,
                        self._sub(m.type, text),
                    )
                    for m in self.ordered(typ.name, tag)
                ]
            return found

        tag_getter = None
        if typ.discriminator is not None:
            member = next(m for m in typ.members if m.name == typ.discriminator)
            tag_getter = _member_getter(typ, member, declared[member.name])

        def encode(v: Any) -> Any:
            if text:
                raw = getattr(v, "__qmp_json__", None)
                if raw is not None:  # a value that carries its own wire text
                    return str(raw())
            tag = None
            if tag_getter is not None:
                raw = tag_getter(v)
                tag = raw.value if isinstance(raw, Enum) else raw
            if text:
                parts = []
                for prefix, get, optional, sub in plan(tag):
                    item = get(v)
                    if item is None and optional:
                        continue
                    parts.append(prefix + ("null" if item is NULL else sub(item)))
                return "{" + ", ".join(parts) + "}"
            out = {}
            for name, get, optional, sub in plan(tag):
                item = get(v)
                if item is None and optional:
                    continue
                out[name] = None if item is NULL else sub(item)
            return out

        return encode
