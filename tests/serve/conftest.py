"""The daemon as the serve tests start it: ``vmstats serve`` in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmstats.testing.qemu import stop_process

Daemon = tuple[subprocess.Popen[str], Path]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts ``vmstats serve`` with extra arguments; stops it at the end of the test."""
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        run_dir = tmp_path / f"run{len(started)}"
        proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                                 str(run_dir), "--scan-interval", "0.3", *extra],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        started.append((proc, run_dir))
        return proc, run_dir

    yield start
    for proc, run_dir in started:
        assert stop_process(proc) == 0  # SIGTERM: a clean exit...
        assert not list(run_dir.glob("*.qmp"))  # ...that removes the sockets
