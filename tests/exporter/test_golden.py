"""The whole ``/metrics`` text of one recorded reading, against a file kept in the tree
(node_exporter keeps ``e2e-output.txt`` for the same reason): any change to names, help,
types, units, labels, bucket bounds or number formats shows up in the diff of a commit.

The reading is QEMU 7.2's own replies (``tests/data/qemu-7.2-captures``: its schemas, VM
and vCPU stats, and vCPUs), so the file is what a Prometheus scraping that QEMU through
vmstats would get.  After a deliberate change, write the files again with
``VMSTATS_UPDATE_GOLDEN=1 ./test.sh tests/exporter/test_golden.py`` and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import CAPTURES
from vmstats.exporter.exposition import Exposition
from vmstats.exporter.scrape import Scrape
from vmstats.qmp.machine import cpus_from_wire
from vmstats.reader.reading import VmReading
from vmstats.reader.sample import sample_from_wire
from vmstats.stats.decode import schemas_from_wire

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "metrics"


def captured(name: str) -> object:
    return json.loads((CAPTURES / name).read_bytes())["return"]


def recorded_scrape() -> Scrape:
    sample = sample_from_wire(1764000000.0, {"vm": captured("20-query-stats-vm.json"),
                                             "vcpu": captured("21-query-stats-vcpu.json")})  # fmt: skip
    cpus = cpus_from_wire(captured("08-query-cpus-fast.json"))
    reading = VmReading("web1", schemas_from_wire(captured("10-query-stats-schemas.json")),
                        sample, {cpu.qom_path: cpu.cpu_index for cpu in cpus},
                        {"pid": "4242", "qemu_version": "7.2.22", "source": "QMP"})  # fmt: skip
    return Scrape([reading], {"db2": "no answer in time"}, 0.0125)


@pytest.mark.parametrize(("openmetrics", "file"), [(False, "qemu-7.2.prom"),
                                                   (True, "qemu-7.2.openmetrics")])  # fmt: skip
def test_metrics_text_is_the_golden_file(openmetrics: bool, file: str) -> None:
    text = Exposition().render(recorded_scrape(), openmetrics)
    path = GOLDEN / file
    if os.environ.get("VMSTATS_UPDATE_GOLDEN"):
        path.write_bytes(text)
    assert text == path.read_bytes()
