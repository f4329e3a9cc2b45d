"""The daemon as the serve tests start it."""

from tests.serve.conftest import Daemon, log_of, rows, start_daemon

__all__ = ["Daemon", "log_of", "rows", "start_daemon"]
