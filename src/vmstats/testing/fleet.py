"""A host full of VMs, for scale tests and benchmarks: N VMMs laid out as QEMU >= 8.1
lays them out, cheap enough for 256 VMs x 8 vCPUs on a 2-core machine, and churn.

Each VMM is a process of its own (``-name NAME`` on its command line, as QEMU's), holding
its VM's control fd and one real KVM vCPU per ``CPU N/KVM`` thread, each vCPU's stats fd
opened by its thread and kept (:class:`vmstats.demo.vm.DemoVM` with ``qemu_layout``).  Its
vCPUs are idle (never run: their stats stand still, the host pays nothing) until
:meth:`Fleet.tick` runs one round of the demo guest's loop on each (every VM's values
move), or they run one every ``1/rate`` seconds.
``unnamed``: every vCPU made on the main thread, as a VMM with no thread names would (and
no VM stats fd kept, as QEMU).

    python -m vmstats.testing.fleet --vms 256 --vcpus 8 [--rate 0.2] [--churn 1]

starts them, says how long that took, and keeps them (and the churn) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from vmstats.testing.qemu import stop_process

#: One VMM: the VM, its vCPUs, "ready" on stdout; each "tick" on stdin runs one round on
#: every vCPU ("ticked"); gone at SIGTERM or when stdin closes.
_VMM = """
import os, signal, sys, threading
from vmstats.demo.guest import GuestProgram
from vmstats.demo.vm import DemoVM
vcpus, rate, unnamed = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "unnamed"
vm = DemoVM(vcpus, GuestProgram(outs_per_round=2, mmio_per_round=1), rate=rate,
            qemu_layout=not unnamed)
if unnamed and vm.provider.vm is not None:  # as QEMU: no VM stats fd kept
    vm.provider.vm.close()
    vm.provider.vm = None
if rate > 0:
    vm.start()
print("ready", flush=True)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
for line in sys.stdin:  # until our parent goes
    vm.run_rounds(1)
    print("ticked", flush=True)
os._exit(0)
"""


def vmm_command(name: str, vcpus: int, rate: float, unnamed: bool = False) -> list[str]:
    """The command line of one fleet VMM called ``name``."""
    return [sys.executable, "-c", _VMM, str(vcpus), str(rate),
            "unnamed" if unnamed else "qemu", "-name", name]  # fmt: skip


@dataclass
class Fleet:
    """VMMs started together, and stopped together (or one by one, for churn)."""

    vcpus: int = 8
    rate: float = 0.0  # rounds a second per vCPU; 0: idle
    unnamed: bool = False
    prefix: str = "fleet"
    vms: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _made: int = 0

    def start(self, count: int, batch: int = 16) -> list[str]:
        """Start ``count`` more VMMs, ``batch`` at a time, each ready (its vCPUs and stats
        fds made) when this returns; their names.  RuntimeError if one fails."""
        names = []
        for first in range(0, count, batch):
            started = [self._spawn() for _ in range(min(batch, count - first))]
            for name, proc in started:
                self._wait_ready(name, proc)
                names.append(name)
        return names

    def _spawn(self) -> tuple[str, subprocess.Popen[bytes]]:
        self._made += 1
        name = f"{self.prefix}-{self._made:04d}"
        proc = subprocess.Popen(vmm_command(name, self.vcpus, self.rate, self.unnamed),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        self.vms[name] = proc
        return name, proc

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if selector.select(timeout) and proc.stdout.readline() == b"ready\n":
                return
        why = "no answer in time"
        if proc.poll() is not None and proc.stderr is not None:
            lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"exit status {proc.returncode}"
        self.stop(name)
        raise RuntimeError(f"fleet VMM {name} did not start: {why}")

    def tick(self) -> None:
        """Every vCPU of every VM runs one round (exits, a halt): every VM's stats move.
        Returns when all have."""
        for proc in self.vms.values():
            assert proc.stdin is not None
            proc.stdin.write(b"tick\n")
            proc.stdin.flush()
        for name, proc in self.vms.items():
            assert proc.stdout is not None
            if proc.stdout.readline() != b"ticked\n":
                raise RuntimeError(f"fleet VMM {name} did not run its round")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.vms.items()}

    def stop(self, name: str) -> None:
        """Stop one VMM (its VM goes with it)."""
        proc = self.vms.pop(name)
        stop_process(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        for proc in self.vms.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for name in list(self.vms):
            self.stop(name)

    def churn(self, per_second: float, cycles: int | None = None) -> Churn:
        """Start and stop one VM ``per_second`` times a second (the oldest goes, a new one
        comes) in a thread, until :meth:`Churn.stop` or ``cycles``."""
        return Churn(self, per_second, cycles)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class Churn:
    """A fleet's churn, running in a thread: one VM stopped and one started per tick."""

    def __init__(self, fleet: Fleet, per_second: float, cycles: int | None) -> None:
        self.fleet = fleet
        self.interval = 1.0 / per_second
        self.cycles = cycles
        self.done = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="churn")
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set() and (self.cycles is None or self.done < self.cycles):
            try:
                self.fleet.stop(next(iter(self.fleet.vms)))
                self.fleet.start(1)
            except (RuntimeError, OSError, StopIteration) as exc:
                self.error = str(exc)
                return
            self.done += 1
            next_tick += self.interval
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmstats.testing.fleet",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--vms", type=int, default=16)
    parser.add_argument("--vcpus", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="rounds a second each vCPU runs (0: idle)")  # fmt: skip
    parser.add_argument("--churn", type=float, default=0.0,
                        help="VMs stopped and started a second (0: none)")  # fmt: skip
    parser.add_argument("--unnamed", action="store_true",
                        help="make the vCPUs on one unnamed thread")  # fmt: skip
    args = parser.parse_args(argv)
    if args.vms < 1 or args.vcpus < 1 or args.rate < 0 or args.churn < 0:
        parser.error("--vms and --vcpus must be at least 1, --rate and --churn 0 or more")
    with Fleet(args.vcpus, args.rate, args.unnamed) as made:
        begun = time.monotonic()
        try:
            made.start(args.vms)
        except (RuntimeError, OSError) as exc:
            print(f"fleet: {exc}", file=sys.stderr)
            return 1
        print(f"{args.vms} VMs x {args.vcpus} vCPUs ready in {time.monotonic() - begun:.1f} s "
              f"(pids {min(made.pids().values())}..{max(made.pids().values())}); Ctrl-C stops "
              "them", flush=True)  # fmt: skip
        churn = made.churn(args.churn) if args.churn else None
        stop: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: stop.append(number))
        while not stop:
            time.sleep(0.5)  # a signal ends it early
        if churn is not None:
            churn.stop()
            if churn.error:
                print(f"fleet: churn stopped: {churn.error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
