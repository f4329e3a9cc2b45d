"""Prometheus scrapes of ``vmstats serve --metrics``: time and size for 1, 8 and 64 demo
VMs of 4 vCPUs, and on the same machine ``prometheus-libvirt-exporter`` and ``virsh
domstats`` on 1 and 8 libvirt domains (with ``--libvirt``: libvirtd must run).

    sudo .venv/bin/python benchmarks/exporter_bench.py [--sizes 1,8,64] [--libvirt]

Targets (issue #11): 64 VMs x 4 vCPUs under 100 ms per scrape; a 1-VM scrape faster than
prometheus-libvirt-exporter's while exporting about 10 times more series.  Method: each
scrape is an HTTP GET as Prometheus sends it (its Accept header, gzip), timed to the last
byte; the VMs run (``--rate`` guest rounds a second), so every vCPU's stats change between
scrapes a second apart ("changed"); a scrape right after another finds most unchanged.
Medians; vmstats and libvirt's exporter alternate scrape by scrape.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vmstats.testing.hostile import DemoServer, wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import stop_process

#: What Prometheus 2.42 sends when it scrapes.
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
          "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # fmt: skip


def scrape(port: int) -> tuple[float, bytes, int]:
    """Seconds to the last byte, the body (decompressed), its size on the wire."""
    headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = reply.read()
        elapsed = time.perf_counter() - started
        wire = len(body)
        if reply.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return elapsed, body, wire


def series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def all_up(port: int, size: int) -> bool:
    return up_count(port) == size


def up_count(port: int) -> int:
    with contextlib.suppress(OSError):
        return scrape(port)[1].count(b"vmstats_up{")
    return -1


DOMAIN = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>{vcpus}</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"""


@contextlib.contextmanager
def libvirt_domains(count: int, vcpus: int):  # type: ignore[no-untyped-def]
    names = [f"vmstats-bench-{i}" for i in range(count)]
    folder = Path(tempfile.mkdtemp(prefix="vmstats-libvirt-"))
    try:
        for name in names:
            xml = folder / f"{name}.xml"
            xml.write_text(DOMAIN.format(name=name, vcpus=vcpus))
            subprocess.run(["virsh", "-q", "create", str(xml)], check=True, capture_output=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["virsh", "-q", "destroy", name], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8,64")
    parser.add_argument("--vcpus", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--rate", type=float, default=2.0, help="guest rounds a second")
    parser.add_argument("--libvirt", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="vmstats-exporter-bench-"))
    daemon = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                               str(run_dir), "--scan-interval", "0.5", "--metrics",
                               f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)  # fmt: skip
    rows = []
    libvirt_rows = []
    with contextlib.ExitStack() as stack:
        demos: list[DemoServer] = []
        try:
            for size in sizes:
                while len(demos) < size:
                    demos.append(stack.enter_context(DemoServer(args.vcpus, rate=args.rate)))
                assert wait_for(functools.partial(all_up, port, size), 120), "VMs not all served"
                time.sleep(2)
                changed, unchanged, exporter, domstats = [], [], [], []
                body, wire = b"", 0
                with contextlib.ExitStack() as libvirt:
                    lport = 0
                    if args.libvirt and size <= 8:
                        names = libvirt.enter_context(libvirt_domains(size, args.vcpus))
                        lport = free_port()
                        proc = subprocess.Popen(["prometheus-libvirt-exporter",
                                                 f"--web.listen-address=127.0.0.1:{lport}"],
                                                stderr=subprocess.DEVNULL)  # fmt: skip
                        libvirt.callback(stop_process, proc)
                        assert wait_for(functools.partial(_answers, lport), 30)
                        time.sleep(2)
                    for _ in range(args.scrapes):
                        time.sleep(1.0)
                        elapsed, body, wire = scrape(port)
                        changed.append(elapsed)
                        unchanged.append(scrape(port)[0])
                        if lport:
                            took, lbody, _ = scrape(lport)
                            exporter.append(took)
                            started = time.perf_counter()
                            subprocess.run(["virsh", "domstats", *names], check=True,
                                           capture_output=True)  # fmt: skip
                            domstats.append(time.perf_counter() - started)
                    if lport:
                        libvirt_rows.append((size, median_ms(exporter), series(lbody),
                                             median_ms(domstats)))  # fmt: skip
                rows.append((size, median_ms(changed), median_ms(unchanged), len(body), wire,
                             series(body)))  # fmt: skip
        finally:
            stop_process(daemon)
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\n### Scrapes of vmstats serve --metrics ({args.vcpus} vCPUs per VM)\n")
    print("| VMs | changed: median ms | unchanged: median ms | bytes | bytes gzip | series |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    if libvirt_rows:
        print("\n### libvirt on the same machine (QEMU 7.2 domains, same vCPUs)\n")
        print("| domains | prometheus-libvirt-exporter: median ms | its series | "
              "virsh domstats: median ms |")  # fmt: skip
        print("|---|---|---|---|")
        for lrow in libvirt_rows:
            print("| " + " | ".join(map(str, lrow)) + " |")
    print(json.dumps({"vmstats": rows, "libvirt": libvirt_rows}))


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
