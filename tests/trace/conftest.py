"""tracefs for the trace tests: mounted for them where it is not (and unmounted after)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root_for
from tests.serve.conftest import nobody_env  # noqa: F401 -- the fixture, for these tests too
from vmstats.trace.format import tracefs
from vmstats.trace.provider import tracing_unavailable_reason

TRACING_REASON = tracing_unavailable_reason()
#: A test that counts tracepoints (marked ``trace``): it runs where this process may (root,
#: here), and says why not elsewhere.
requires_tracing = needs_root_for(pytest.mark.trace, TRACING_REASON,
                                  "exit reasons cannot be counted here")  # fmt: skip


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
