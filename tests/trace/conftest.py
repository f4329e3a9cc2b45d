"""tracefs for the trace tests: mounted for them where it is not (and unmounted after)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.serve.conftest import nobody_env  # noqa: F401 -- the fixture, for these tests too
from vmstats.trace.format import tracefs
from vmstats.trace.provider import tracing_unavailable_reason

TRACING_REASON = tracing_unavailable_reason()
F = TypeVar("F", bound=Callable[..., Any])
#: Skipped only where the privileges lack: as root a refusal (the verifier's, say) is a
#: failure, never a silent skip.
_SKIP = pytest.mark.skipif(TRACING_REASON is not None and os.geteuid() != 0,
                           reason=f"exit reasons cannot be counted here: {TRACING_REASON}")  # fmt: skip


def requires_tracing(test: F) -> F:
    """A test that counts tracepoints (marked ``trace``): it runs where this process may
    (root, here), and says why not elsewhere."""
    return pytest.mark.trace(_SKIP(test))  # type: ignore[no-any-return]


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
