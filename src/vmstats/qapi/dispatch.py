"""Run one QMP request object against a set of commands: QEMU's ``qmp_dispatch``.

Pure: it takes the parsed request and returns the response object (or raises nothing:
every failure becomes an error response).  Capabilities negotiation, framing and the
greeting belong to the QMP session (:mod:`vmstats.qmp.session`).

A handler may be a coroutine function (the host daemon forwards some commands to a
QEMU): then :meth:`Dispatcher.respond` gives a coroutine that makes the response, and
the session's transport awaits it before answering the next request, as QEMU answers
in order.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from vmstats.qapi.errors import CommandNotFound, GenericError, qmp_error
from vmstats.qapi.json import RawJSON
from vmstats.qapi.output import OutputEncoder
from vmstats.qapi.qdict import qdict, qdict_order, qdict_parsed
from vmstats.qapi.schema import Schema
from vmstats.qapi.visitor import InputVisitor

log = logging.getLogger(__name__)

#: A command's implementation: receives the visited arguments (one object when the
#: command is ``boxed``, keyword arguments otherwise) and returns a model value, or
#: :class:`RawJSON` (the wire text of the value), or an awaitable of either.
Handler = Callable[..., Any]

#: A response object, or a coroutine making it (a command whose handler is asynchronous).
Response = dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]


def check_request(request: Any, allow_oob: bool) -> str:
    """Validate the envelope of a request; return the command name.

    Members are checked in QDict order, so with several problems the one QEMU reports
    first is the one reported here.
    """
    if not isinstance(request, dict):
        raise GenericError("QMP input must be a JSON object")
    exec_key: str | None = None
    for key in qdict_order(request):
        value = request[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise GenericError(f"QMP input member '{key}' must be a string")
            if exec_key is not None:
                raise GenericError(f"QMP input member '{key}' clashes with '{exec_key}'")
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise GenericError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise GenericError(f"QMP input member '{key}' is unexpected")
    if exec_key is None:
        raise GenericError("QMP input lacks member 'execute'")
    return str(request[exec_key])


def is_oob(request: Any) -> bool:
    """Does the request ask to run out-of-band (QEMU's ``qmp_is_oob``)?"""
    return isinstance(request, dict) and "exec-oob" in request and "execute" not in request


class Dispatcher:
    """Commands of one schema bound to their handlers."""

    def __init__(
        self,
        schema: Schema,
        handlers: Mapping[str, Handler],
        encoder: OutputEncoder | None = None,
    ) -> None:
        unknown = set(handlers) - set(schema.commands)
        if unknown:
            raise ValueError(f"handlers for undeclared commands: {sorted(unknown)}")
        self.schema = schema
        self.handlers = dict(handlers)
        self.encoder = encoder or OutputEncoder(schema)
        self._prepared: dict[tuple[int, bool], tuple[Any, str, Any]] = {}

    def execute(self, name: str, arguments: dict[str, Any], *, wire: bool = False) -> Any:
        """Run command ``name``; return its result or raise :class:`QapiError`.

        The result is JSON-ready Python values, or with ``wire`` QEMU's JSON text wrapped
        in :class:`RawJSON` (what a session writes; cheaper for big replies).
        """
        return self._run(name, self._visit(name, arguments), wire)

    def _visit(self, name: str, arguments: dict[str, Any]) -> Any:
        """Check the arguments (QEMU's errors); what the handler will be called with."""
        if name not in self.handlers:
            raise CommandNotFound(f"The command {name} has not been found")
        command = self.schema.commands[name]
        values = InputVisitor(self.schema, arguments).visit_arguments(command.arg_type)
        if command.boxed:
            assert command.arg_type is not None
            factory = getattr(self.schema.lookup(command.arg_type), "factory", None)
            return factory(**values) if factory else values
        return values

    def _run(self, name: str, call: Any, wire: bool) -> Any:
        result = self._call(name, call)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError(f"{name} is asynchronous: use respond()")
        return self._encode(name, result, wire)

    def _call(self, name: str, call: Any) -> Any:
        handler = self.handlers[name]
        return handler(call) if self.schema.commands[name].boxed else handler(**call)

    def _encode(self, name: str, result: Any, wire: bool) -> Any:
        ret_type = self.schema.commands[name].ret_type
        if ret_type is None:
            return RawJSON("{}") if wire else {}
        if isinstance(result, RawJSON):  # already the wire text (a forwarded reply)
            return result if wire else json.loads(result)
        if wire:
            return RawJSON(self.encoder.encode_text(ret_type, result))
        return self.encoder.encode(ret_type, result)

    def _prepare(self, request: Any, allow_oob: bool) -> tuple[str, Any]:
        """The command's name and checked arguments, or the error QEMU reports.

        A polling client sends the same request object again (the streamer remembers
        repeated requests): its checks are not done again.  The arguments a handler gets
        are immutable model objects, so sharing them between calls is safe.
        """
        key = (id(request), allow_oob)
        seen = self._prepared.get(key)
        if seen is not None and seen[0] is request:
            return seen[1], seen[2]
        name = check_request(request, allow_oob)
        if is_oob(request):
            command = self.schema.commands.get(name)
            if name in self.handlers and command is not None and not command.allow_oob:
                raise GenericError(f"The command {name} does not support OOB")
        call = self._visit(name, request.get("arguments", {}))
        if len(self._prepared) >= 32:
            self._prepared.clear()
        self._prepared[key] = (request, name, call)
        return name, call

    def dispatch(
        self, request: Any, *, allow_oob: bool = False, wire: bool = False
    ) -> dict[str, Any]:
        """Answer one request object with a response object (``return`` or ``error``).

        With ``wire`` the ``return`` value is :class:`RawJSON` text (see :meth:`execute`).
        Synchronous commands only; :meth:`respond` serves both kinds.
        """
        response = self.respond(request, allow_oob=allow_oob, wire=wire)
        if not isinstance(response, dict):
            response.close()
            raise TypeError("an asynchronous command: use respond()")
        return response

    def respond(self, request: Any, *, allow_oob: bool = False, wire: bool = False) -> Response:
        """:meth:`dispatch`, or for a command whose handler is asynchronous a coroutine
        that makes the response once the handler is done."""
        try:
            name, call = self._prepare(request, allow_oob)
            result = self._call(name, call)
            if inspect.isawaitable(result):
                return self._respond_later(request, name, result, wire)
            return _response(request, {"return": self._encode(name, result, wire)})
        except Exception as exc:  # noqa: BLE001 -- every failure is an error reply; a bug is logged there
            return _response(request, {"error": qmp_error(exc)})

    async def _respond_later(self, request: Any, name: str, pending: Any, wire: bool
                             ) -> dict[str, Any]:  # fmt: skip
        try:
            return _response(request, {"return": self._encode(name, await pending, wire)})
        except Exception as exc:  # noqa: BLE001 -- as in respond(): an error reply, never a crash
            return _response(request, {"error": qmp_error(exc)})


def _response(request: Any, response: dict[str, Any]) -> dict[str, Any]:
    """The response with the request's ``id`` echoed, in QEMU's key order."""
    if isinstance(request, dict) and "id" in request:
        response["id"] = qdict_parsed(request["id"])
    return qdict(response)
