"""Check a parsed JSON value against a schema type, failing exactly as QEMU's input visitor.

QEMU's ``qobject-input-visitor`` walks the value in schema order and stops at the first
problem, naming it with a path such as ``providers[0].names[1]``.  The texts, the path
rules (including the places where QEMU prints only the bare member name) and the order in
which problems are found are reproduced here, so that a client sees the same error from us
as from QEMU for any input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmstats.qapi.errors import GenericError
from vmstats.qapi.ghash import StrHashSet
from vmstats.qapi.qdict import qdict_order
from vmstats.qapi.schema import (
    INT_RANGES,
    AlternateType,
    ArrayType,
    BuiltinType,
    EnumType,
    Member,
    ObjectType,
    Schema,
)

_MISSING: Any = object()
_INT64 = INT_RANGES["int64"]
_UINT64 = INT_RANGES["uint64"]


def _missing(name: str) -> GenericError:
    return GenericError(f"Parameter '{name}' is missing")


def _bad_type(name: str, expected: str) -> GenericError:
    return GenericError(f"Invalid parameter type for '{name}', expected: {expected}")


def _bad_value(name: str, expected: str) -> GenericError:
    return GenericError(f"Parameter '{name}' expects {expected}")


def json_kind(value: Any) -> str:
    """The QObject type a parsed JSON value has: dict, list, str, bool, number or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


@dataclass
class _Frame:
    """A container being visited: QEMU's StackObject."""

    name: str | None
    obj: dict[str, Any] | list[Any]
    unvisited: StrHashSet | None = None
    index: int = -1
    position: int = 0


class InputVisitor:
    """One visit of one root value.  Raises :class:`GenericError` on the first problem."""

    def __init__(self, schema: Schema, root: Any) -> None:
        self.schema = schema
        self.root = root
        self.stack: list[_Frame] = []

    # -- QEMU's naming of the thing being visited -------------------------------------

    def full_name(self, name: str | None, skip: int = 0) -> str:
        parts: list[str] = []
        for frame in reversed(self.stack):
            if skip:
                skip -= 1
            elif isinstance(frame.obj, dict):
                parts.append(name if name is not None else "<anonymous>")
                parts.append(".")
            else:
                parts.append(f"[{frame.index}]")
            name = frame.name
        text = "".join(reversed(parts))
        if name is not None:
            return name + text
        if text.startswith("."):
            return text[1:]
        return text or "<anonymous>"

    # -- fetching values ------------------------------------------------------------

    def _try_get(self, name: str | None, consume: bool = True) -> Any:
        if not self.stack:
            return self.root
        top = self.stack[-1]
        if isinstance(top.obj, dict):
            assert name is not None
            value = top.obj.get(name, _MISSING)
            if consume and value is not _MISSING and top.unvisited is not None:
                top.unvisited.discard(name)
            return value
        value = top.obj[top.position] if top.position < len(top.obj) else _MISSING
        if consume:
            top.position += 1
            top.index += 1
        return value

    def _get(self, name: str | None, consume: bool = True) -> Any:
        value = self._try_get(name, consume)
        if value is _MISSING:
            raise _missing(self.full_name(name))
        return value

    def _present(self, name: str) -> bool:
        top = self.stack[-1]
        return isinstance(top.obj, dict) and name in top.obj

    # -- visiting by type -----------------------------------------------------------

    def visit(self, type_name: str, name: str | None) -> Any:
        typ = self.schema.lookup(type_name)
        if isinstance(typ, BuiltinType):
            return self._builtin(typ.name, name)
        if isinstance(typ, EnumType):
            return self._enum(typ, name)
        if isinstance(typ, ArrayType):
            return self._array(typ, name)
        if isinstance(typ, ObjectType):
            return self._object(typ, name)
        return self._alternate(typ, name)

    def _builtin(self, type_name: str, name: str | None) -> Any:
        if type_name == "any":
            return self._get(name)
        value = self._get(name)
        kind = json_kind(value)
        if type_name == "str":
            if kind != "str":
                raise _bad_type(self.full_name(name), "string")
            return value
        if type_name == "bool":
            if kind != "bool":
                raise _bad_type(self.full_name(name), "boolean")
            return value
        if type_name == "null":
            if kind != "null":
                raise _bad_type(self.full_name(name), "null")
            return None
        if type_name == "number":
            if kind != "number":
                raise _bad_type(self.full_name(name), "number")
            return float(value)
        low, high = INT_RANGES[type_name]
        if low < 0:
            if (
                kind != "number"
                or not isinstance(value, int)
                or not (_INT64[0] <= value <= _INT64[1])
            ):
                raise _bad_type(self.full_name(name), "integer")
        else:
            if kind != "number" or not isinstance(value, int):
                raise _bad_value(self.full_name(name), "uint64")
            if _INT64[0] <= value < 0:
                value += 1 << 64  # QEMU accepts negative input for uint64 and wraps it
            elif value > _UINT64[1]:
                raise _bad_value(self.full_name(name), "uint64")
        if not low <= value <= high:
            raise _bad_value(name if name is not None else "null", type_name)
        return value

    def _enum(self, typ: EnumType, name: str | None) -> Any:
        text = self._builtin("str", name)
        if text not in typ.values:
            shown = name if name is not None else "null"
            raise GenericError(f"Parameter '{shown}' does not accept value '{text}'")
        return typ.factory(text) if typ.factory else text

    def _array(self, typ: ArrayType, name: str | None) -> list[Any]:
        value = self._get(name)
        if not isinstance(value, list):
            raise _bad_type(self.full_name(name), "array")
        self.stack.append(_Frame(name, value))
        out = [self.visit(typ.element, None) for _ in value]
        self.stack.pop()
        return out

    def _start_struct(self, name: str | None) -> None:
        value = self._get(name)
        if not isinstance(value, dict):
            raise _bad_type(self.full_name(name), "object")
        self.stack.append(_Frame(name, value, StrHashSet(qdict_order(value))))

    def _check_struct(self) -> None:
        top = self.stack[-1]
        assert top.unvisited is not None
        extra = top.unvisited.first()
        if extra is not None:
            raise GenericError(f"Parameter '{self.full_name(extra)}' is unexpected")

    def _members(self, members: tuple[Member, ...], into: dict[str, Any]) -> None:
        for member in members:
            if member.optional and not self._present(member.name):
                into[member.attr] = None
                continue
            into[member.attr] = self.visit(member.type, member.name)

    def object_members(self, typ: ObjectType) -> dict[str, Any]:
        """Visit the members of ``typ`` in the current struct (base, then the variant)."""
        values: dict[str, Any] = {}
        self._members(typ.members, values)
        if typ.discriminator is not None:
            tag = values[typ.discriminator.replace("-", "_")]
            tag_text = getattr(tag, "value", tag)
            extra = self.schema.object_members(typ, tag_text)[len(typ.members) :]
            self._members(extra, values)
        return values

    def _object(self, typ: ObjectType, name: str | None) -> Any:
        self._start_struct(name)
        values = self.object_members(typ)
        self._check_struct()
        self.stack.pop()
        return typ.factory(**values) if typ.factory else values

    def _alternate(self, typ: AlternateType, name: str | None) -> Any:
        value = self._get(name, consume=False)
        kind = json_kind(value)
        for branch in typ.branches:
            if self.schema.json_kind(branch.type) == kind:
                return self.visit(branch.type, name)
        raise _bad_type(name if name is not None else "null", typ.name)

    # -- roots ----------------------------------------------------------------------

    def visit_arguments(self, arg_type: str | None) -> dict[str, Any]:
        """Visit a command's ``arguments`` object, as QEMU's generated marshaller does."""
        self._start_struct(None)
        values: dict[str, Any] = {}
        if arg_type is not None:
            typ = self.schema.lookup(arg_type)
            assert isinstance(typ, ObjectType)
            values = self.object_members(typ)
        self._check_struct()
        self.stack.pop()
        return values


def visit(schema: Schema, type_name: str, value: Any) -> Any:
    """Decode ``value`` (parsed JSON) as ``type_name``; QEMU's errors on bad input."""
    return InputVisitor(schema, value).visit(type_name, None)
