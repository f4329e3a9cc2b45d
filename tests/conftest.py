"""Shared fixtures, and the count of tests that needed real KVM, QEMU, libvirt, Prometheus,
the kernel's tracepoints or its BPF iterators.

CI must show that those tests really ran; the summary line printed at the end
(``vmstats: kvm tests ran=N skipped=M; qemu tests ...; libvirt ...; prometheus ...;
trace ...; bpf ...``) says so.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

CAPTURES = Path(__file__).parent / "data" / "qemu-7.2-captures"

MARKERS = ("kvm", "qemu", "libvirt", "prometheus", "trace", "bpf")
F = TypeVar("F", bound=Callable[..., Any])


def needs_root_for(marker: pytest.MarkDecorator, reason: str | None,
                   what: str) -> Callable[[F], F]:  # fmt: skip
    """A test of what only root (or a few capabilities) may do here, marked ``marker``:
    skipped only where this process is not root and ``reason`` says why it cannot; as
    root a refusal (the verifier's, say) is a failure, never a silent skip."""
    skip = pytest.mark.skipif(reason is not None and os.geteuid() != 0,
                              reason=f"{what}: {reason}")  # fmt: skip

    def mark(test: F) -> F:
        return marker(skip(test))  # type: ignore[no-any-return]

    return mark


_outcomes: Counter[tuple[str, str]] = Counter()
_markers: dict[str, set[str]] = {}


@pytest.fixture
def captures() -> Path:
    return CAPTURES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _markers[item.nodeid] = {m.name for m in item.iter_markers()}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.skipped):
        for marker in MARKERS:
            if marker in _markers.get(report.nodeid, ()):
                _outcomes[(marker, "skipped" if report.skipped else "ran")] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    parts = [
        f"{m} tests ran={_outcomes[(m, 'ran')]} skipped={_outcomes[(m, 'skipped')]}"
        for m in MARKERS
    ]
    terminalreporter.write_line("vmstats: " + "; ".join(parts))
