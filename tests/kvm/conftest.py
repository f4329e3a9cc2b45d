"""Fixtures for tests on the real kernel: they run wherever /dev/kvm is usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root_for
from tests.serve.conftest import nobody_env  # noqa: F401 -- the fixture, for these tests too
from vmstats.demo import DemoVM, GuestProgram
from vmstats.kvm.ioctl import kvm_unavailable_reason
from vmstats.kvm.iterate import IteratorUnavailable, KvmIterator

KVM_REASON = kvm_unavailable_reason()
requires_kvm = pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")


def _iterators_reason() -> str | None:
    try:
        KvmIterator().close()
    except IteratorUnavailable as exc:
        return str(exc)
    return None


#: Tests of the BPF iterators that list every process's KVM fds: marked ``bpf``, and
#: skipped only without root.
requires_iterators = needs_root_for(pytest.mark.bpf, _iterators_reason(),
                                    "no BPF iterators here")  # fmt: skip

#: PVM (KVM inside a Firecracker guest) emulates ring-0 code: some counters mean other things.
ON_PVM = Path("/sys/module/kvm_pvm").exists()
requires_pvm = pytest.mark.skipif(not ON_PVM, reason="exact emulator counts are PVM-specific")

PROGRAM = GuestProgram(outs_per_round=10, mmio_per_round=3)


@pytest.fixture
def demo_vm() -> Iterator[DemoVM]:
    with DemoVM(vcpus=2, program=PROGRAM, rate=0) as vm:
        yield vm
