"""``query-qmp-schema``: describe a schema the way QEMU's introspection does.

QEMU hides type names behind numbers (``"249"`` for StatsFilter in 7.2) that its generator
assigns over the whole schema, in first-use order, and emits entries in that order too.
We cannot derive QEMU's numbers from our subset, so a table gives them, in emission order;
everything else (members, variants, features, defaults) comes from our declaration.
Types absent from the table get fresh numbers after it, so the schema can grow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vmstats.qapi.schema import (
    NULL,
    AlternateType,
    ArrayType,
    BuiltinType,
    EnumType,
    ObjectType,
    Schema,
)

EMPTY = "q_empty"  # QEMU's implicit empty object type


class Introspector:
    """Builds SchemaInfo entries (as plain dicts) for the commands of a schema."""

    def __init__(self, schema: Schema, names: Sequence[tuple[str, str]]) -> None:
        self.schema = schema
        self._names = dict(names)
        self._rank = {name: i for i, (name, _) in enumerate(names)}
        self._extra: dict[str, str] = {}

    def _builtin_name(self, name: str) -> str:
        typ = self.schema.lookup(name)
        assert isinstance(typ, BuiltinType)
        return {"string": "str", "boolean": "bool", "value": "any"}.get(
            typ.json_type, typ.json_type
        )

    def key(self, name: str) -> str:
        """The canonical (QAPI-side) key of a type: sized ints collapse into ``int``."""
        if name == EMPTY:
            return name
        typ = self.schema.lookup(name)
        if isinstance(typ, ArrayType):
            return f"[{self.key(typ.element)}]"
        if isinstance(typ, BuiltinType):
            return self._builtin_name(name)
        return name

    def wire_name(self, name: str) -> str:
        key = self.key(name)
        if key in self._names:
            return self._names[key]
        if key.startswith("["):
            return f"[{self.wire_name(key[1:-1])}]"
        if name != EMPTY and isinstance(self.schema.lookup(name), BuiltinType):
            return key
        return self._extra.setdefault(key, str(1000 + len(self._extra)))

    def _refs(self, name: str) -> Iterable[str]:
        if name == EMPTY:
            return
        typ = self.schema.lookup(name)
        if isinstance(typ, ArrayType):
            yield typ.element
        elif isinstance(typ, ObjectType):
            yield from (m.type for m in typ.members)
            if typ.discriminator is not None:
                tag_type = next(m.type for m in typ.members if m.name == typ.discriminator)
                enum = self.schema.lookup(tag_type)
                assert isinstance(enum, EnumType)
                for value in enum.introspected:
                    yield typ.variants.get(value, EMPTY)
        elif isinstance(typ, AlternateType):
            yield from (b.type for b in typ.branches)

    def entries(self, commands: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        used: dict[str, str] = {}  # key -> a name to describe it by

        def use(name: str) -> str:
            key = self.key(name)
            if key not in used:
                used[key] = name
                for ref in self._refs(name):
                    use(ref)
            return self.wire_name(name)

        for command_name in commands:
            command = self.schema.commands[command_name]
            entry: dict[str, Any] = {
                "name": command.name,
                "meta-type": "command",
                "arg-type": use(command.arg_type or EMPTY),
                "ret-type": use(command.ret_type or EMPTY),
            }
            if command.allow_oob:
                entry["allow-oob"] = True
            if command.features:
                entry["features"] = list(command.features)
            out.append(entry)
        order = sorted(used, key=lambda k: (self._rank.get(k, len(self._rank)), k))
        out.extend(self._describe(used[key]) for key in order)
        return out

    def _describe(self, name: str) -> dict[str, Any]:
        wire = self.wire_name(name)
        if name == EMPTY:
            return {"name": wire, "meta-type": "object", "members": []}
        typ = self.schema.lookup(name)
        if isinstance(typ, BuiltinType):
            return {"name": wire, "meta-type": "builtin", "json-type": typ.json_type}
        if isinstance(typ, EnumType):
            return {
                "name": wire,
                "meta-type": "enum",
                "members": [{"name": v} for v in typ.introspected],
                "values": list(typ.introspected),
            }
        if isinstance(typ, ArrayType):
            return {"name": wire, "meta-type": "array", "element-type": self.wire_name(typ.element)}
        if isinstance(typ, AlternateType):
            return {
                "name": wire,
                "meta-type": "alternate",
                "members": [{"type": self.wire_name(b.type)} for b in typ.branches],
            }
        members = []
        for m in typ.members:
            member: dict[str, Any] = {"name": m.name, "type": self.wire_name(m.type)}
            if m.optional:
                member["default"] = NULL
            if m.features:
                member["features"] = list(m.features)
            members.append(member)
        entry: dict[str, Any] = {"name": wire, "meta-type": "object", "members": members}
        if typ.discriminator is not None:
            tag_type = next(m.type for m in typ.members if m.name == typ.discriminator)
            enum = self.schema.lookup(tag_type)
            assert isinstance(enum, EnumType)
            explicit = [v for v in enum.introspected if v in typ.variants]
            implicit = [v for v in enum.introspected if v not in typ.variants]
            entry["tag"] = typ.discriminator
            entry["variants"] = [
                {"case": v, "type": self.wire_name(typ.variants.get(v, EMPTY))}
                for v in explicit + implicit
            ]
        return entry
