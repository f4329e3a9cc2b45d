"""One scrape: every VM read at once, each within its deadline, and what vmstats says
about the scrape itself (``vmstats_up``, ``vmstats_vm_info``, the scrape's duration).

The exposition (:mod:`.exposition`) writes the text; the HTTP side (:mod:`.http`) only
serves it.  A VM that cannot be read in time is ``vmstats_up 0``; the others are exported
as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from vmstats.errors import VmstatsError
from vmstats.reader.reading import Reader, VmReading, read_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scrape:
    """One scrape: the VMs read, the VMs that could not be (name -> why), its duration."""

    readings: Sequence[VmReading]
    down: dict[str, str]
    duration: float


async def scrape(readers: Iterable[Reader], timeout: float) -> Scrape:
    """Read every VM at once, each within ``timeout``."""
    started = time.perf_counter()
    readers = list(readers)
    results = await read_all(readers, timeout)
    readings, down = [], {}
    taken: set[str] = set()
    for reader, result in zip(readers, results, strict=True):
        name = result.name if isinstance(result, VmReading) else reader.name
        unique, n = name, 1
        while unique in taken:  # the vm label must tell VMs apart
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique)
        if isinstance(result, VmReading):
            result.name = unique
            readings.append(result)
        elif isinstance(result, VmstatsError | TimeoutError | OSError):
            down[unique] = str(result) or "no answer in time"
            log.debug("scrape: %s is down: %s", unique, down[unique])
        else:
            raise result
    return Scrape(readings, down, time.perf_counter() - started)


def vcpu_label(reading: VmReading, path: str) -> str:
    """A vCPU's ``vcpu`` label: its number, or its QOM path if the VM did not say."""
    number = reading.vcpus.get(path)
    return str(number) if number is not None else path


def vmstats_families(scrape: Scrape) -> Iterable[Metric]:
    """``vmstats_up``, ``vmstats_vm_info`` and ``vmstats_scrape_duration_seconds``."""
    return [*vm_families(scrape), duration_family(scrape)]


def vm_families(scrape: Scrape) -> list[Metric]:
    """``vmstats_up`` and ``vmstats_vm_info``: a sample each per VM."""
    up = GaugeMetricFamily("vmstats_up", "1 if the VM could be read in this scrape, else 0",
                           labels=["vm"])  # fmt: skip
    info = InfoMetricFamily("vmstats_vm", "the VM: its VMM's pid, QEMU version and where "
                            "its stats come from", labels=["vm"])  # fmt: skip
    for reading in scrape.readings:
        up.add_metric([reading.name], 1)
        info.add_metric([reading.name], reading.info)
    for name in scrape.down:
        up.add_metric([name], 0)
    return [up, info]


def duration_family(scrape: Scrape) -> Metric:
    """``vmstats_scrape_duration_seconds``."""
    return GaugeMetricFamily("vmstats_scrape_duration_seconds",
                             "seconds this scrape took to read every VM", unit="seconds",
                             value=scrape.duration)  # fmt: skip
