"""QAPI error values: the ``class`` and ``desc`` QEMU puts in an error response.

Everything below the QMP session raises these; only the session turns them into JSON.
"""

from __future__ import annotations


class QapiError(Exception):
    """An error QEMU would report as ``{"error": {"class": ..., "desc": ...}}``."""

    error_class = "GenericError"

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc

    def to_qmp(self) -> dict[str, str]:
        """The ``error`` member of a QMP response (QDict key order: class, desc)."""
        return {"class": self.error_class, "desc": self.desc}


class GenericError(QapiError):
    """QEMU's ``ERROR_CLASS_GENERIC_ERROR``: almost every failure."""


class CommandNotFound(QapiError):
    """QEMU's ``ERROR_CLASS_COMMAND_NOT_FOUND``."""

    error_class = "CommandNotFound"
