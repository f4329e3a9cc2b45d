"""A QAPI schema, built from declarations written as QEMU writes ``qapi/*.json``.

One declaration (a list of expressions such as ``{"struct": "Stats", "data": {...}}``)
yields the types the input visitor checks against, the output encoder walks and
introspection describes.  Python classes are bound to QAPI type names so that visiting
produces model objects directly.

Extensions: an enum value may carry ``"since": "8.0"``; a schema built for an older QEMU
version leaves it out, so one declaration serves both the 7.x wire and the 8.0 one.  An
enum value marked ``"extension": True`` is vmstats' own: accepted and sent, but left out
of introspection, which stays QEMU's byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Version = tuple[int, int]
Factory = Callable[..., Any]

#: QAPI built-in types and the JSON type introspection reports for each.
BUILTINS: dict[str, str] = {
    "str": "string",
    "bool": "boolean",
    "number": "number",
    "int": "int",
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "int",
    "uint8": "int",
    "uint16": "int",
    "uint32": "int",
    "uint64": "int",
    "size": "int",
    "null": "null",
    "any": "value",
}

#: Ranges of the sized integer built-ins, for the visitor's range check.
INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "int": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
    "size": (0, (1 << 64) - 1),
}


_JSON_KIND = {
    "string": "str",
    "boolean": "bool",
    "int": "number",
    "number": "number",
    "null": "null",
    "value": "value",
}


def py_name(qapi_name: str) -> str:
    """The Python attribute for a QAPI member name (``qom-path`` -> ``qom_path``)."""
    return qapi_name.replace("-", "_")


class _JSONNull:
    """An explicit JSON ``null`` in a model value (None means "member absent")."""

    def __repr__(self) -> str:
        return "NULL"


NULL: Any = _JSONNull()


@dataclass(frozen=True)
class Member:
    """One member of an object type; ``optional`` is QAPI's leading ``*``."""

    name: str
    type: str
    optional: bool = False
    features: tuple[str, ...] = ()

    @property
    def attr(self) -> str:
        return py_name(self.name)


@dataclass(frozen=True)
class EnumType:
    name: str
    values: tuple[str, ...]
    factory: Factory | None = None
    extensions: frozenset[str] = frozenset()  # values not introspected

    @property
    def introspected(self) -> tuple[str, ...]:
        """The values introspection shows: QEMU's."""
        return tuple(v for v in self.values if v not in self.extensions)


@dataclass(frozen=True)
class ObjectType:
    """A struct, or a flat union when ``discriminator`` is set.

    ``members`` are the base members (for a struct, all of them); ``variants`` maps a
    discriminator value to the struct whose members are added for that value.
    """

    name: str
    members: tuple[Member, ...]
    discriminator: str | None = None
    variants: Mapping[str, str] = field(default_factory=dict)
    factory: Factory | None = None


@dataclass(frozen=True)
class AlternateType:
    """An alternate: the JSON type of the value picks the branch."""

    name: str
    branches: tuple[Member, ...]


@dataclass(frozen=True)
class ArrayType:
    element: str

    @property
    def name(self) -> str:
        return f"[{self.element}]"


@dataclass(frozen=True)
class BuiltinType:
    name: str
    json_type: str


QapiType = EnumType | ObjectType | AlternateType | ArrayType | BuiltinType


@dataclass(frozen=True)
class Command:
    name: str
    arg_type: str | None
    ret_type: str | None
    boxed: bool = False
    allow_oob: bool = False
    features: tuple[str, ...] = ()


def _parse_version(text: str) -> Version:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _members(data: Mapping[str, Any]) -> tuple[Member, ...]:
    out = []
    for key, typ in data.items():
        optional = key.startswith("*")
        features: tuple[str, ...] = ()
        if isinstance(typ, dict):
            features = tuple(typ.get("features", ()))
            typ = typ["type"]
        out.append(Member(key.lstrip("*"), _type_ref(typ), optional, features))
    return tuple(out)


def _type_ref(typ: Any) -> str:
    if isinstance(typ, list):
        return f"[{typ[0]}]"
    if isinstance(typ, str):
        return typ
    raise ValueError(f"unsupported type reference {typ!r}")


class Schema:
    """Types and commands of a QAPI declaration, as seen by one QEMU version."""

    def __init__(
        self,
        exprs: Sequence[Mapping[str, Any]],
        *,
        version: Version = (7, 2),
        bindings: Mapping[str, Factory] | None = None,
    ) -> None:
        self.version = version
        self.types: dict[str, QapiType] = {n: BuiltinType(n, j) for n, j in BUILTINS.items()}
        self.commands: dict[str, Command] = {}
        bindings = bindings or {}
        for expr in exprs:
            self._add(expr, bindings)

    # -- building -------------------------------------------------------------------

    def _visible(self, value: Any) -> str | None:
        if isinstance(value, str):
            return value
        since = value.get("since")
        if since and _parse_version(since) > self.version:
            return None
        return str(value["name"])

    def _add(self, expr: Mapping[str, Any], bindings: Mapping[str, Factory]) -> None:
        if "enum" in expr:
            name = expr["enum"]
            values = tuple(v for v in map(self._visible, expr["data"]) if v is not None)
            extensions = frozenset(str(v["name"]) for v in expr["data"]
                                   if isinstance(v, dict) and v.get("extension"))  # fmt: skip
            self.types[name] = EnumType(name, values, bindings.get(name), extensions)
        elif "struct" in expr:
            name = expr["struct"]
            self.types[name] = ObjectType(name, _members(expr["data"]), factory=bindings.get(name))
        elif "union" in expr:
            name = expr["union"]
            base = expr["base"]
            if isinstance(base, str):
                base_type = self.types[base]
                assert isinstance(base_type, ObjectType)
                members = base_type.members
            else:
                members = _members(base)
            self.types[name] = ObjectType(
                name,
                members,
                discriminator=expr["discriminator"],
                variants=dict(expr["data"]),
                factory=bindings.get(name),
            )
        elif "alternate" in expr:
            name = expr["alternate"]
            self.types[name] = AlternateType(name, _members(expr["data"]))
        elif "command" in expr:
            self._add_command(expr)
        else:
            raise ValueError(f"unknown QAPI expression {expr!r}")

    def _add_command(self, expr: Mapping[str, Any]) -> None:
        name = expr["command"]
        data = expr.get("data")
        arg_type: str | None
        if data is None or isinstance(data, str):
            arg_type = data
        else:
            arg_type = f"q_obj_{name}-arg"
            self.types[arg_type] = ObjectType(arg_type, _members(data))
        returns = expr.get("returns")
        self.commands[name] = Command(
            name,
            arg_type,
            None if returns is None else _type_ref(returns),
            boxed=bool(expr.get("boxed", False)),
            allow_oob=bool(expr.get("allow-oob", False)),
            features=tuple(expr.get("features", ())),
        )

    # -- lookup ---------------------------------------------------------------------

    def lookup(self, name: str) -> QapiType:
        """The type called ``name``; array types (``[T]``) are made on demand."""
        found = self.types.get(name)
        if found is not None:
            return found
        if name.startswith("[") and name.endswith("]"):
            element = name[1:-1]
            self.lookup(element)
            array = ArrayType(element)
            self.types[name] = array
            return array
        raise KeyError(name)

    def json_kind(self, name: str) -> str:
        """The JSON kind a value of type ``name`` has on the wire: dict, list, str, bool,
        number or null (``value`` for ``any``).  Alternates choose their branch by it."""
        typ = self.lookup(name)
        if isinstance(typ, ArrayType):
            return "list"
        if isinstance(typ, ObjectType):
            return "dict"
        if isinstance(typ, EnumType):
            return "str"
        if isinstance(typ, BuiltinType):
            return _JSON_KIND[typ.json_type]
        return "alternate"

    def object_members(self, typ: ObjectType, tag: str | None) -> tuple[Member, ...]:
        """All members of ``typ`` for discriminator value ``tag`` (base first)."""
        if typ.discriminator is None or tag is None:
            return typ.members
        variant = typ.variants.get(tag)
        if variant is None:
            return typ.members
        variant_type = self.lookup(variant)
        assert isinstance(variant_type, ObjectType)
        return typ.members + variant_type.members
