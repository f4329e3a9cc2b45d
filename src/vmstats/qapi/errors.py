"""QAPI error values and the one place where any error becomes a QMP ``error`` member.

The classes live in :mod:`vmstats.errors` (the whole tree); this module is the protocol
edge: :func:`qmp_error` decides what a client sees for any exception.
"""

from __future__ import annotations

import logging

from vmstats.errors import CommandNotFound, GenericError, QapiError, StatsError

__all__ = ["CommandNotFound", "GenericError", "QapiError", "qmp_error"]

log = logging.getLogger(__name__)

#: What a client sees for a bug: nothing of the exception's text, which may hold internals.
INTERNAL_ERROR = "internal error in vmstats (see the server log)"


def qmp_error(exc: BaseException) -> dict[str, str]:
    """The ``error`` member of a QMP response for ``exc``.

    :class:`QapiError` keeps its class and text; :class:`StatsError` is QEMU's
    GenericError with its text; anything else is a bug, logged with its traceback and
    reported as :data:`INTERNAL_ERROR`.
    """
    if isinstance(exc, QapiError):
        return exc.to_qmp()
    if isinstance(exc, StatsError):
        return {"class": GenericError.error_class, "desc": str(exc)}
    log.error("command failed unexpectedly", exc_info=exc)
    return {"class": GenericError.error_class, "desc": INTERNAL_ERROR}
