"""The floor under ``vmstats serve``'s first scan: what the kernel work alone costs, from
Python, for a fleet of VMs laid out as QEMU >= 8.1 lays them out (docs/benchmarks.md).

    sudo .venv/bin/python benchmarks/scan_floor.py [--vms 256] [--vcpus 8] [--rounds 5]

A first scan must, for every VMM: list its fds and read each link (to tell a VMM, and
which fds are its stats fds); copy each stats fd (``pidfd_getfd``) and check the copy is
what was listed (a ``readlink`` of our own fd: the VMM may swap fds meanwhile); read each
copy's header, id and descriptors; read the name of each vCPU's thread (``CPU N/KVM``,
QEMU's CPU index); read its ``status`` (its user) and ``cmdline`` (its ``-name``); and
bind its socket.  Each is timed here on its own, over every VMM of a fleet the benchmark
starts, in as few Python steps as it takes; the fastest of ``--rounds`` rounds (the
floor: what noise cannot lower) is reported per operation and per scan.  The sum is what
no first scan written in Python on this machine can go under, whatever it does around it.
Run as root, with nothing else busy.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmstats.kvm.attach import copy_fd, fd_links, read_proc
from vmstats.testing.fleet import Fleet


def fastest(rounds: int, work: Callable[[], object], cleanup: Callable[[], None] = lambda: None
            ) -> float:  # fmt: skip
    """The fastest of ``rounds`` runs of ``work``, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
        cleanup()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=256)
    parser.add_argument("--vcpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with Fleet(args.vcpus, prefix="floor") as fleet:
        fleet.start(args.vms)
        pids = list(fleet.pids().values())
        fds = {pid: os.listdir(f"/proc/{pid}/fd") for pid in pids}
        links = {pid: fd_links(pid).links for pid in pids}
        stats = [(pid, link) for pid in pids for link in links[pid] if link.vcpu_id is not None]
        pidfds = {pid: os.pidfd_open(pid) for pid in pids}
        copies: list[int] = []

        def copy_all() -> None:
            copies.extend(copy_fd(pidfds[pid], link.fd) for pid, link in stats)

        def close_copies() -> None:
            for fd in copies:
                os.close(fd)
            copies.clear()

        copy_all()
        ids = [os.pread(fd, 64, 24).split(b"\0")[0].decode() for fd in copies]
        creators = [(pid, int(ident.split("/")[0].removeprefix("kvm-")))
                    for (pid, _), ident in zip(stats, ids, strict=True)]  # fmt: skip
        run_dir = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        sockets: list[socket.socket] = []

        def bind_all() -> None:
            for n in range(len(pids)):
                sock = socket.socket(socket.AF_UNIX)
                sock.bind(str(run_dir / f"vm{n}.qmp"))
                os.chmod(run_dir / f"vm{n}.qmp", 0o660)
                sock.listen()
                sockets.append(sock)

        def unbind_all() -> None:
            for n, sock in enumerate(sockets):
                sock.close()
                os.unlink(run_dir / f"vm{n}.qmp")
            sockets.clear()

        n_fds, n_stats = sum(map(len, fds.values())), len(stats)
        rows: list[tuple[str, int, float]] = [
            ("list each VMM's fds", len(pids),
             fastest(args.rounds, lambda: [os.listdir(f"/proc/{p}/fd") for p in pids])),
            ("read each fd's link", n_fds,
             fastest(args.rounds, lambda: [os.readlink(f"/proc/{p}/fd/{f}")
                                           for p in pids for f in fds[p]])),
            ("copy each stats fd (pidfd_getfd)", n_stats,
             fastest(args.rounds, copy_all, close_copies)),
        ]  # fmt: skip
        copy_all()
        rows += [
            ("check each copy (readlink of our fd)", n_stats,
             fastest(args.rounds, lambda: [os.readlink(f"/proc/self/fd/{c}") for c in copies])),
            ("read each copy's header, id, descriptors", n_stats,
             fastest(args.rounds, lambda: [(os.pread(c, 24, 0), os.pread(c, 48, 24),
                                            os.pread(c, 4096, 72)) for c in copies])),
            ("read each vCPU thread's name", n_stats,
             fastest(args.rounds, lambda: [read_proc(f"/proc/{p}/task/{t}/comm")
                                           for p, t in creators])),
            ("read each VMM's status and cmdline", len(pids),
             fastest(args.rounds, lambda: [(read_proc(f"/proc/{p}/status"),
                                            read_proc(f"/proc/{p}/cmdline")) for p in pids])),
            ("bind, chmod and listen a socket per VM (tmpfs)", len(pids),
             fastest(args.rounds, bind_all, unbind_all)),
        ]  # fmt: skip
        close_copies()
        for fd in pidfds.values():
            os.close(fd)
        os.rmdir(run_dir)
    print(f"{args.vms} VMs x {args.vcpus} vCPUs; fastest of {args.rounds} rounds\n")
    print("| operation | count | us each | ms per scan |")
    print("|---|---:|---:|---:|")
    for what, count, seconds in rows:
        print(f"| {what} | {count:,} | {seconds / count * 1e6:.1f} | {seconds * 1e3:.1f} |")
    print(f"| **the floor** | | | **{sum(s for _, _, s in rows) * 1e3:.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
