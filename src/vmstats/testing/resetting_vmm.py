"""A VMM that recreates its VM on SIGUSR1, as a confidential guest's reset would: it
closes the old VM's stats fds and opens the new VM's, at the same fd numbers (the lowest
free ones).  Prints ``ready`` when its first VM runs and ``reset`` after each new one; runs
until SIGTERM.  For the daemon's test that copied fds are noticed to be stale."""

from __future__ import annotations

import signal
import sys
import threading

from vmstats.demo.vm import DemoVM


def main() -> int:
    resets = threading.Semaphore(0)
    stop = threading.Event()

    def reset(signum: int, frame: object) -> None:
        if signum == signal.SIGTERM:
            stop.set()
        resets.release()

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGTERM, reset)
    vm = DemoVM(vcpus=1, rate=float(sys.argv[1]) if len(sys.argv) > 1 else 200.0)
    vm.start()
    print("ready", flush=True)
    while True:
        resets.acquire()
        vm.close()
        if stop.is_set():
            return 0
        vm = DemoVM(vcpus=1, rate=1.0)  # slow: its counters stay below the old VM's
        vm.start()
        print("reset", flush=True)


if __name__ == "__main__":
    sys.exit(main())
