"""tracefs for the trace tests: mounted for them where it is not (and unmounted after)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmstats.trace.format import tracefs


@pytest.fixture(scope="session")
def mounted() -> Iterator[Path]:
    """tracefs, mounted for the test if it was not (and unmounted after)."""
    found = tracefs()
    if found is not None:
        yield found
        return
    if os.geteuid() != 0:
        pytest.skip("tracefs is not mounted, and mounting it needs root")
    target = Path("/sys/kernel/tracing")
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0 or not (target / "events").is_dir():
        pytest.skip(f"tracefs cannot be mounted here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", str(target)], check=False)
