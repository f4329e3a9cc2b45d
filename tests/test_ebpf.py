"""The ``bpf`` system call as :mod:`vmstats.ebpf` makes it, on the real kernel."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.conftest import needs_root_for
from vmstats.ebpf import (
    ADD64_K,
    BPF_F_SLEEPABLE,
    BPF_PROG_TYPE_SYSCALL,
    EXIT,
    MOV64_K,
    R0,
    insn,
    load,
    run_syscall,
)


def _reason() -> str | None:
    try:
        run_syscall(b"".join([insn(MOV64_K, R0, imm=0), insn(EXIT)]), b"vmstats_probe")
    except OSError as exc:
        return exc.strerror
    return None


#: Marked ``bpf``; skipped only without root.
requires_programs = needs_root_for(pytest.mark.bpf, _reason(), "no BPF programs here")


@pytest.fixture
def two_signals() -> Iterator[list[int]]:
    """SIGALRM every 0.5 ms, twice: a load that takes longer is cut by each (the
    handler runs between two tries, and stops the timer after the second)."""
    caught: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        caught.append(signum)
        if len(caught) == 2:
            signal.setitimer(signal.ITIMER_REAL, 0)

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        yield caught
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@requires_programs
def test_a_signal_while_the_verifier_runs_does_not_refuse_the_program(
    two_signals: list[int],
) -> None:
    """The verifier gives up with EAGAIN when a signal comes for the loading thread (a
    SIGHUP to the daemon as it starts, a profiler): the load is tried again, and the
    exit-reason counters and the iterators are not left off for it.  The program is
    long enough (1,000 instructions: milliseconds to verify) for both signals to cut it."""
    code = b"".join([insn(MOV64_K, R0, imm=0), *[insn(ADD64_K, R0, imm=1)] * 1000, insn(EXIT)])
    prog = load(BPF_PROG_TYPE_SYSCALL, code, b"vmstats_long", flags=BPF_F_SLEEPABLE)
    os.close(prog)
    assert two_signals == [signal.SIGALRM] * 2
