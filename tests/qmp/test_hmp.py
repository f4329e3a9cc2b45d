"""HMP text, byte for byte against QEMU 7.2 captures and the reference's shapes."""

from __future__ import annotations

import re

import pytest

from tests.qmp.replay import ReplayProvider, capture_text
from tests.stats.provider import FakeProvider, vcpu_path
from vmstats.qmp.hmp import HumanMonitor
from vmstats.stats import (
    StatsRegistry,
    StatsSchemaValue,
    StatsType,
    StatsUnit,
    StatsValue,
)
from vmstats.stats.units import hmp_unit


def monitor(provider: ReplayProvider | None = None) -> HumanMonitor:
    provider = provider or ReplayProvider.from_captures()
    registry = StatsRegistry()
    registry.add_stats_callbacks(provider)
    return HumanMonitor(registry, lambda: provider.cpus, (7, 2, 22),
                        "Debian 1:7.2+dfsg-7+deb12u18+b3")  # fmt: skip


@pytest.mark.parametrize(("command", "capture"), [
    ("help info stats", "h01-help-info-stats.txt"),
    ("info stats vm", "h02-info-stats-vm.txt"),
    ("info stats vcpu", "h03-info-stats-vcpu.txt"),
    ("info stats vcpu exits", "h09-info-stats-vcpu-exits.txt"),
])  # fmt: skip
def test_output_is_byte_identical_to_qemu(command: str, capture: str) -> None:
    assert monitor().execute(command) == capture_text(capture)


def test_same_data_as_a_busy_qemu_prints_the_same_bytes() -> None:
    """b05 was printed by a running QEMU: feed its values back, expect its bytes."""
    text = capture_text("b05-info-stats-vcpu.txt")
    overrides: dict[str, StatsValue] = {}
    for name, rest in re.findall(r"^    (\w+) \([^)]*\): (.*?) ?\r$", text, re.M):
        if rest in ("yes", "no"):
            overrides[name] = rest == "yes"
        elif rest.startswith("["):
            overrides[name] = [int(v) for v in re.findall(r"=(-?\d+)", rest)]
        else:
            overrides[name] = int(rest)
    provider = ReplayProvider.from_captures()
    provider.overrides = overrides
    assert monitor(provider).execute("info stats vcpu") == text


ROWS = [
    # command line, output (QEMU 7.2, observed)
    ("info stats foo", "invalid stats target foo\r\n"),
    ("info stats VM", "invalid stats target VM\r\n"),
    ("info stats cryptodev", "invalid stats target cryptodev\r\n"),
    ("info stats vm * bar", "invalid stats provider bar\r\n"),
    ("info stats vm * cryptodev", "invalid stats provider cryptodev\r\n"),
    ("info stats", 'stats: string expected\r\nTry "help info stats" for more information\r\n'),
    ('info stats vcpu "exits kvm', 'stats: string expected\r\nTry "help info stats" for more information\r\n'),
    ("info stats vm * kvm extra",
     'stats: extraneous characters at the end of line\r\nTry "help info stats" for more information\r\n'),
    ("info stats vm nope", ""),
    ("info stats vcpu ,", ""),
    ("info stats vcpu 'exits' kvm", ""),
    ("info stats vm pages_4k,mmu_unsync kvm", "    pages_4k (instant): 0\r\n    mmu_unsync (instant): 0\r\n"),
    ("info stats vcpu exits,,halt_exits",
     "provider: kvm\r\n    halt_exits (cumulative): 0\r\n    exits (cumulative): 0\r\n"),
    ('info stats vcpu "exits"', "provider: kvm\r\n    exits (cumulative): 0\r\n"),
    ("  info   stats vm  pages_4k  ", "provider: kvm\r\n    pages_4k (instant): 0\r\n"),
    ("cpu 1", ""),
    ("cpu 9", "invalid CPU index\r\n"),
    ("cpu", 'unexpected end of expression\r\nTry "help cpu" for more information\r\n'),
    ("cpu 1 2", 'cpu: extraneous characters at the end of line\r\nTry "help cpu" for more information\r\n'),
    ("cpu x", 'invalid char \'x\' in expression\r\nTry "help cpu" for more information\r\n'),
    ("cpu -1", '\'cpu\' has failed: integer is for 32-bit values\r\nTry "help cpu" for more information\r\n'),
    ("frobnicate", "unknown command: 'frobnicate'\r\n"),
    ("info nosuch", "unknown command: 'info nosuch'\r\n"),
    ("help nosuch", "unknown command: 'nosuch'\r\n"),
    ("help info nosuch", "unknown command: 'info nosuch'\r\n"),
    ("help cpu", "cpu index -- set the default CPU\r\n"),
    ("", ""),
    ("info version", "7.2.22Debian 1:7.2+dfsg-7+deb12u18+b3\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "output"), ROWS)
def test_command_lines_as_qemu(command: str, output: str) -> None:
    assert monitor().execute(command) == output


@pytest.mark.parametrize(("cpu_index", "exits"), [(None, 1000), (0, 1000), (1, 1001), (2, 1002)])
def test_cpu_index_selects_the_vcpu(cpu_index: int | None, exits: int) -> None:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())  # vCPU i has exits = 1000 + i
    m = HumanMonitor(registry, lambda: [vcpu_path(i) for i in range(3)], (7, 2, 0), "")
    assert m.execute("info stats vcpu exits", cpu_index=cpu_index) == (
        f"provider: kvm\r\n    exits (cumulative): {exits}\r\n"
    )


def test_cpu_command_lasts_for_its_line_only() -> None:
    registry = StatsRegistry()
    registry.add_stats_callbacks(FakeProvider())
    m = HumanMonitor(registry, lambda: [vcpu_path(i) for i in range(3)], (7, 2, 0), "")
    assert m.execute("cpu 2") == ""
    assert "exits (cumulative): 1000" in m.execute("info stats vcpu exits")
    assert m.execute("cpu 3") == "invalid CPU index\r\n"


def test_help_lists_our_commands_in_qemus_format() -> None:
    assert monitor().execute("help").splitlines() == [
        "cpu index -- set the default CPU",
        "help|? [cmd] -- show the help",
        "info [subcommand] -- show various information about the system state",
    ]
    assert monitor().execute("info") == monitor().execute("help info")


@pytest.mark.parametrize(("value", "unit"), [
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.SECONDS, 10, -9), "ns"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.SECONDS, 10, -6), "us"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.SECONDS, 10, 3), "Ks"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.SECONDS), "s"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.BYTES, 2, 10), "KiB"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.BYTES, 2, 12), "* 2^12 bytes"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.CYCLES, 10, 3), "* 10^3 cycles"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, None, 10, 3), "* 10^3"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE, StatsUnit.CYCLES), "cycles"),
    (StatsSchemaValue("x", StatsType.INSTANT, StatsUnit.BOOLEAN), "boolean"),
    (StatsSchemaValue("x", StatsType.CUMULATIVE), ""),
])  # fmt: skip
def test_unit_text_follows_qemus_rules(value: StatsSchemaValue, unit: str) -> None:
    assert hmp_unit(value) == unit
