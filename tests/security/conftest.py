"""The daemon as the serve tests start it."""

from tests.serve.conftest import Daemon, start_daemon

__all__ = ["Daemon", "start_daemon"]
