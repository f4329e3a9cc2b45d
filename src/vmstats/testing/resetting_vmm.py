"""A VMM that recreates its VM, as a confidential guest's reset does, one step per
SIGUSR1 so that a test sees each state a scan can catch: the first SIGUSR1 closes the old
VM and makes the new VM up to its stats fd (printed ``vm``), the next one makes the new
VM's vCPU and its stats fd (printed ``reset``).  The kernel gives the new fds the lowest
free numbers, the old ones'.  Prints ``ready`` when its first VM is made; runs until
SIGTERM.  For the daemon's test that copied fds are noticed to be stale.

No VM ever runs and no thread is made, so the process's thread count never changes
(recent kernels add a thread to a VM's process at its first ``KVM_RUN``, for NX huge page
recovery): the daemon cannot learn of the new vCPU from a change in the thread count."""

from __future__ import annotations

import signal
import sys
import threading

from vmstats.demo.vm import DemoVM, _Vcpu

_steps = threading.Semaphore(0)
_stop = threading.Event()


def _step(signum: int, frame: object) -> None:
    if signum == signal.SIGTERM:
        _stop.set()
    _steps.release()


def _next_step() -> None:
    """Wait for the next SIGUSR1; leave at SIGTERM."""
    _steps.acquire()
    if _stop.is_set():
        raise SystemExit(0)


class _SteppedVM(DemoVM):
    """A VM that waits for a step between its VM stats fd and its first vCPU."""

    def _create_vcpu(self, index: int, mmap_size: int) -> _Vcpu:
        if index == 0:
            print("vm", flush=True)
            _next_step()
        return super()._create_vcpu(index, mmap_size)


def main() -> int:
    signal.signal(signal.SIGUSR1, _step)
    signal.signal(signal.SIGTERM, _step)
    vm = DemoVM(vcpus=1)
    print("ready", flush=True)
    try:
        while True:
            _next_step()
            vm.close()
            vm = _SteppedVM(vcpus=1)
            print("reset", flush=True)
    except SystemExit:  # SIGTERM: its fds close as it exits
        return 0


if __name__ == "__main__":
    sys.exit(main())
