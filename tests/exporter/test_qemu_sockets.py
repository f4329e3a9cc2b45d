"""``vmstats exporter`` pointed at QEMU's own QMP sockets, 7.2 and 10.0: one connection
per scrape with every command in one write, the values QEMU gives, and QEMU's monitor
free between scrapes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.testing.hostile import wait_for
from vmstats.testing.prometheus import free_port
from vmstats.testing.qemu import QemuVM, qemu_unavailable_reason
from vmstats.testing.qemu10 import qemu10_unavailable_reason, qemu10_vm

pytestmark = [pytest.mark.kvm, requires_kvm, pytest.mark.qemu]
QEMUS: dict[str, tuple[Callable[..., QemuVM], str | None]] = {
    "7.2": (lambda n, **kw: QemuVM(n, **kw), qemu_unavailable_reason()),
    "10.0": (lambda n, **kw: qemu10_vm(n, **kw), qemu10_unavailable_reason()),
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return str(reply.read().decode())


def vcpu_exits(vm: QemuVM) -> list[int]:
    """Each vCPU's ``exits`` as QEMU's own monitor gives them, vCPU 0 first."""
    qmp = vm.connect()  # the monitor is free between scrapes
    try:
        reply = json.loads(qmp.request(b'{"execute": "query-stats", '
                                       b'"arguments": {"target": "vcpu"}}'))  # fmt: skip
    finally:
        qmp.close()
    return [dict((s["name"], s["value"]) for s in r["stats"])["exits"]
            for r in reversed(reply["return"])]  # fmt: skip


def scraped_exits(text: str, vcpus: int) -> list[float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("kvm_vcpu_exits_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    return [found[f'kvm_vcpu_exits_total{{vcpu="{i}",vm="guest7"}}'] for i in range(vcpus)]


@pytest.mark.parametrize("version", list(QEMUS))
def test_the_exporter_reads_a_qemu_socket_as_qemu_answers(version: str) -> None:
    launch, reason = QEMUS[version]
    if reason is not None:
        pytest.skip(f"no QEMU {version}: {reason}")
    port = free_port()
    with launch(3, extra_args=["-name", "guest7"]) as vm:  # running: its counters move
        exporter = subprocess.Popen([sys.executable, "-m", "vmstats", "exporter",
                                     str(vm.qmp_path), "--listen", f"127.0.0.1:{port}"],
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert wait_for(lambda: 'vmstats_up{vm="guest7"} 1.0' in _text(port))
            before = vcpu_exits(vm)
            text = scrape(port)
            after = vcpu_exits(vm)
        finally:
            exporter.terminate()
            _, errors = exporter.communicate(timeout=10)
        assert exporter.returncode == 0, errors
        assert "Traceback" not in errors, errors
    assert f'qemu_version="{version}' in text
    assert after[0] > 0  # SeaBIOS ran on vCPU 0
    for low, seen, high in zip(before, scraped_exits(text, 3), after, strict=True):
        assert low <= seen <= high


def _text(port: int) -> str:
    try:
        return scrape(port)
    except OSError:
        return ""
