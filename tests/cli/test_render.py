"""Human output of replies, and the client's parsing of addresses and filters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from tests.stats.provider import VCPU_SCHEMA, VM_SCHEMA, FakeProvider, vcpu_path
from vmstats.cli.client import split_list
from vmstats.cli.render import index_schemas, print_results, print_schemas
from vmstats.qmp.client import make_filter, parse_address
from vmstats.stats import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsSchema,
    StatsTarget,
)


def render(target: StatsTarget) -> str:
    provider = FakeProvider(vcpus=2)
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    schemas = index_schemas(list(provider.schemas()))
    print_results(console, target, list(provider.stats(target, None, None))[::-1], schemas)
    return console.export_text()


def test_results_are_shown_in_natural_order_with_units() -> None:
    text = render(StatsTarget.VCPU)
    assert text.index(vcpu_path(0)) < text.index(vcpu_path(1))
    lines = [line for line in text.splitlines() if "wait_ns" in line or "busy" in line]
    assert "50 ns" in lines[2] and "yes" in lines[3]  # vCPU 1: 50 ns waited, busy
    assert "6 samples; 0 s - 1 ns: 1, 1 ns - 2 ns: 2, >= 2 ns: 3" in text  # vCPU 1's buckets


def test_no_result_says_so() -> None:
    console = Console(record=True, width=100, file=open(os.devnull, "w"))  # noqa: SIM115
    print_results(console, StatsTarget.VM, [], {})
    assert console.export_text().strip() == "no statistics matched"


def test_schemas_table_lists_every_stat() -> None:
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    print_schemas(console, [StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, VCPU_SCHEMA[::-1]),
                            StatsSchema(StatsProvider.KVM, StatsTarget.VM, VM_SCHEMA[::-1])])  # fmt: skip
    text = console.export_text()
    assert text.index("kvm / vm") < text.index("kvm / vcpu")
    assert "10^-9" in text and "log2-histogram" in text


@pytest.mark.parametrize(("text", "address"), [
    ("/run/vm.qmp", "/run/vm.qmp"),
    ("localhost:4444", ("localhost", 4444)),
    ("[::1]:4444", ("::1", 4444)),
    ("vm.sock", "vm.sock"),
    ("host:port", "host:port"),  # not a port: a path
])  # fmt: skip
def test_parse_address(text: str, address: object) -> None:
    assert parse_address(text) == address


def test_an_existing_file_named_like_an_address_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a:1").touch()
    assert parse_address("a:1") == "a:1"


@pytest.mark.parametrize(("args", "expected"), [
    (("vm",), StatsFilter(StatsTarget.VM)),
    (("vcpu", None, ["exits"]), StatsFilter(StatsTarget.VCPU,
                                            [StatsRequest(StatsProvider.KVM, ["exits"])])),
    (("vm", "kvm"), StatsFilter(StatsTarget.VM, [StatsRequest(StatsProvider.KVM, None)])),
    (("vcpu", None, None, ["/p"]), StatsFilter(StatsTarget.VCPU, None, ["/p"])),
])  # fmt: skip
def test_make_filter(args: tuple[object, ...], expected: StatsFilter) -> None:
    assert make_filter(*args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "items"), [
    (None, None), ("a", ["a"]), ("pages_4k, pages_2m", ["pages_4k", "pages_2m"]), ("a,,b", ["a", "", "b"]),
])  # fmt: skip
def test_split_list(text: str | None, items: list[str] | None) -> None:
    assert split_list(text) == items
