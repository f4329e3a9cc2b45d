"""The daemon as the serve tests start it."""

from tests.serve.conftest import Daemon, counted_threads, log_of, rows, start_daemon

__all__ = ["Daemon", "counted_threads", "log_of", "rows", "start_daemon"]
