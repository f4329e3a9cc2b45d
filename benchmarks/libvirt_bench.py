"""libvirt's domains: per-VM stats through our socket and our exporter, against
``virsh domstats`` and libvirt's in-process ``getAllDomainStats()``, on the same 1 and 8
domains (QEMU 7.2 under libvirt 9.0, no disk, idle in SeaBIOS).

    sudo .venv/bin/python benchmarks/libvirt_bench.py [--domains 1 8] [--calls 30]

Targets (issue #18): our socket at most 0.2x ``virsh domstats``; no more vCPU kicks per
refresh than one libvirt read, however many readers.  Method: the ways alternate call by
call, each timed to its reply's last byte (a ``virsh`` call to its exit), medians; kicks
are the ``signal_exits`` all vCPUs of all the domains gained (QEMU 7.2 kicks a vCPU to
read its stats),
read by one libvirt VCPU-group read before and after each way's calls, minus that read's
own kick.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import libvirt

from vmstats.testing.libvirt import (
    DOMAIN_PREFIX,
    URI,
    Libvirtd,
    create,
    destroy,
    qemu10_emulator,
)
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import RawQMP, stop_process

VM = b'{"execute":"query-stats","arguments":{"target":"vm"}}'
VCPU = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'


def our_socket(path: Path) -> Callable[[], None]:
    """A reader's refresh: connect, negotiate, both targets, close."""

    def call() -> None:
        qmp = RawQMP(path, timeout=30)
        qmp.negotiate()
        for request in (VM, VCPU):
            reply = qmp.request(request)
            assert reply.startswith(b'{"return"'), reply[:200]
        qmp.close()

    return call


def scrape(port: int) -> Callable[[], None]:
    def call() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            body = reply.read()
        assert b"kvm_vcpu_exits_total" in body

    return call


def virsh_domstats(name: str) -> Callable[[], None]:
    def call() -> None:
        subprocess.run(["virsh", "-c", URI, "domstats", name], check=True,
                       capture_output=True)  # fmt: skip

    return call


def in_process(conn: libvirt.virConnect) -> Callable[[], None]:
    def call() -> None:
        assert conn.getAllDomainStats(0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)

    return call


def kicks(conn: libvirt.virConnect, names: list[str]) -> int:
    """signal_exits of every vCPU of the domains, summed (one VCPU-group read)."""
    domains = [conn.lookupByName(n) for n in names]
    total = 0
    for _, stats in conn.domainListGetStats(domains, libvirt.VIR_DOMAIN_STATS_VCPU):
        total += sum(v for k, v in stats.items() if k.endswith(".signal_exits.sum"))
    return int(total)


def run(count: int, calls: int) -> None:
    names = [f"{DOMAIN_PREFIX}bench-{i}" for i in range(count)]
    for name in names:
        create(name, vcpus=2)
    emulator, why = qemu10_emulator()
    newer = f"{DOMAIN_PREFIX}bench-qemu10"
    if emulator is not None:  # one more, on QEMU 10.0: it keeps its vCPU stats fds
        create(newer, vcpus=2, emulator=emulator)
        names.append(newer)
    else:
        print(f"(no QEMU 10.0 domain: {why})")
    # Two daemons: the default (a libvirt read shared for 1 s) and one that reads libvirt
    # at every request (--libvirt-max-age 0), as a reader refreshing each second would.
    run_dirs = [Path(tempfile.mkdtemp(prefix="vmstats-libvirt-bench-")) for _ in range(2)]
    port = free_port()
    daemons = [
        subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--libvirt", "--run-dir",
                          str(run_dir), *extra], stderr=subprocess.DEVNULL)
        for run_dir, extra in zip(run_dirs, (["--metrics", f"127.0.0.1:{port}"],
                                             ["--libvirt-max-age", "0"]), strict=True)
    ]  # fmt: skip
    conn = libvirt.openReadOnly(URI)
    try:
        deadline = time.monotonic() + 60
        while not all((d / f"{n}.qmp").exists() for n in names for d in run_dirs):
            assert time.monotonic() < deadline, "the domains were not served"
            time.sleep(0.2)
        time.sleep(5)  # SeaBIOS settles
        ways = {
            "our socket, one VM (vm + vcpu)": our_socket(run_dirs[0] / f"{names[0]}.qmp"),
            "the same, --libvirt-max-age 0": our_socket(run_dirs[1] / f"{names[0]}.qmp"),
            "our exporter, every VM": scrape(port),
            "virsh domstats, one VM": virsh_domstats(names[0]),
            "getAllDomainStats(), every VM": in_process(conn),
        }
        if emulator is not None:
            ways["our socket, the QEMU 10.0 VM"] = our_socket(run_dirs[0] / f"{newer}.qmp")
            ways["the QEMU 10.0 VM, --libvirt-max-age 0"] = our_socket(run_dirs[1] / f"{newer}.qmp")
            ways["virsh domstats, the QEMU 10.0 VM"] = virsh_domstats(newer)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(calls):
            for way, call in ways.items():
                started = time.perf_counter()
                call()
                times[way].append((time.perf_counter() - started) * 1e3)
        base = statistics.median(times["virsh domstats, one VM"])
        extra = " and 1 on QEMU 10.0" if emulator is not None else ""
        print(f"\n{count} domain(s) on QEMU 7.2{extra}, 2 vCPUs each, {calls} calls per way, "
              "interleaved\n")  # fmt: skip
        print("| way | median ms | vs virsh domstats | vCPU kicks per call |")
        print("|---|---:|---:|---:|")
        for way, call in ways.items():
            alone = kicks(conn, names)
            own = kicks(conn, names) - alone  # what the measuring read itself costs
            before = kicks(conn, names)
            for _ in range(calls):
                call()
            per = (kicks(conn, names) - before - own) / calls
            median = statistics.median(times[way])
            print(f"| {way} | {median:.2f} | {median / base:.2f}x | {per:.2f} |")
    finally:
        conn.close()
        for daemon in daemons:
            stop_process(daemon)
        for name in names:
            destroy(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    with Libvirtd():
        for count in args.domains:
            run(count, args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
