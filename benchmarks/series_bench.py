"""What each ``--series`` choice costs: series, scrape time and bytes, and the memory a
real Prometheus spends holding them, for a fleet of VMs served by ``vmstats serve``
(docs/metrics.md).

    python benchmarks/series_bench.py [--vms 256] [--vcpus 8] [--prometheus-seconds 40]

Per choice: the daemon rereads the series file (SIGHUP); 5 scrapes with values standing
still and 5 after every vCPU ran a round (medians, to the last byte); then a fresh
Prometheus scrapes the daemon every 2 s for ``--prometheus-seconds`` (values moving
between scrapes) and its own /metrics says its head series and Go heap in use, against
a Prometheus scraping nothing.  Run as root.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from scale_bench import scrape, scrapes, served

from vmstats.testing.fleet import Fleet
from vmstats.testing.hostile import wait_for
from vmstats.testing.prometheus import Prometheus, free_port, prometheus_unavailable_reason

CHOICES = {
    "every series, per vCPU (default)": "",
    "per vCPU, no histograms": "histograms = false\n",
    "per VM (vCPUs summed)": 'vcpus = "vm"\n',
    "per VM, no histograms": 'vcpus = "vm"\nhistograms = false\n',
    "per vCPU, exits and halts only": 'include = ["kvm_vcpu_*exits_total", '
    '"kvm_vcpu_halt_*"]\nhistograms = false\n',
}


def own_metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as page:
        text = page.read().decode()
    out = {}
    for name in ("prometheus_tsdb_head_series", "go_memstats_heap_inuse_bytes",
                 "process_resident_memory_bytes"):  # fmt: skip
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        out[name] = float(match[1]) if match else float("nan")
    return out


def prometheus_memory(target: str, seconds: float, fleet: Fleet | None) -> dict[str, float]:
    """A fresh Prometheus scraping ``target`` every 2 s for ``seconds`` (the fleet's
    values moving meanwhile): its head series and memory."""
    with Prometheus([target] if target else [], interval=2.0) as prometheus:
        stop = threading.Event()

        def tick() -> None:
            while fleet is not None and not stop.wait(1.0):
                fleet.tick()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        time.sleep(seconds)
        stop.set()
        ticker.join()
        return own_metrics(prometheus.url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=256)
    parser.add_argument("--vcpus", type=int, default=8)
    parser.add_argument("--prometheus-seconds", type=float, default=40.0)
    args = parser.parse_args()
    if (reason := prometheus_unavailable_reason()) is not None:
        print(f"series_bench: no Prometheus: {reason}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="vmstats-series-"))
    run_dir, series = tmp / "run", tmp / "series.toml"
    series.write_text("")
    port = free_port()
    empty = prometheus_memory("", args.prometheus_seconds / 2, None)
    print(f"| {args.vms} VMs x {args.vcpus} vCPUs | series | bytes | scrape, still, ms | "
          "scrape, changed, ms | Prometheus head series | its heap in use, MB | "
          "heap per series, bytes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| Prometheus scraping nothing | | | | | {empty['prometheus_tsdb_head_series']:,.0f} | "
        f"{empty['go_memstats_heap_inuse_bytes'] / 2**20:,.0f} | |",
        flush=True,
    )
    with Fleet(args.vcpus, prefix="series") as fleet:
        fleet.start(args.vms)
        daemon = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                                   str(run_dir), "--metrics", f"127.0.0.1:{port}",
                                   "--series", str(series)], stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            if not wait_for(lambda: set(fleet.vms) <= served(run_dir), timeout=300):
                raise RuntimeError("not every VM served")
            for label, text in CHOICES.items():
                series.write_text(text)
                before = scrape(port)[2]
                daemon.send_signal(signal.SIGHUP)
                if text:  # wait until the page follows the file

                    def followed(before: int = before) -> bool:
                        return scrape(port)[2] != before

                    wait_for(followed, timeout=120)
                scrape(port)
                still = scrapes(port, None)
                changed = scrapes(port, fleet)
                memory = prometheus_memory(f"127.0.0.1:{port}", args.prometheus_seconds, fleet)
                heads = memory["prometheus_tsdb_head_series"]
                heap = memory["go_memstats_heap_inuse_bytes"]
                extra = heap - empty["go_memstats_heap_inuse_bytes"]
                print(
                    f"| {label} | {still[2]:,} | {still[1]:,} | {still[0]:.0f} | "
                    f"{changed[0]:.0f} | {heads:,.0f} | {heap / 2**20:,.0f} | "
                    f"{extra / max(heads, 1):,.0f} |",
                    flush=True,
                )
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
