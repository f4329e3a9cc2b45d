"""Human output of replies, and the client's parsing of addresses and filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stats.provider import VCPU_SCHEMA, VM_SCHEMA, FakeProvider, vcpu_path
from vmstats.cli.client import split_list
from vmstats.cli.render import index_schemas, results_text, schemas_text
from vmstats.qmp.client import make_filter, parse_address
from vmstats.stats import (
    StatsFilter,
    StatsProvider,
    StatsRequest,
    StatsSchema,
    StatsSchemaValue,
    StatsTarget,
    StatsType,
)


def render(target: StatsTarget) -> str:
    provider = FakeProvider(vcpus=2)
    schemas = index_schemas(list(provider.schemas()))
    return results_text(target, list(provider.stats(target, None, None))[::-1], schemas)


def test_results_are_shown_in_natural_order_with_units() -> None:
    text = render(StatsTarget.VCPU)
    assert text.index(vcpu_path(0)) < text.index(vcpu_path(1))
    lines = [line for line in text.splitlines() if "wait_ns" in line or "busy" in line]
    assert "50 ns" in lines[2]
    assert "yes" in lines[3]
    assert "6 samples; 0 s - 1 ns: 1, 1 ns - 2 ns: 2, >= 2 ns: 3" in text  # vCPU 1's buckets


def test_no_result_says_so() -> None:
    assert results_text(StatsTarget.VM, [], {}) == "no statistics matched\n"


def test_schemas_table_lists_every_stat() -> None:
    text = schemas_text([StatsSchema(StatsProvider.KVM, StatsTarget.VCPU, VCPU_SCHEMA[::-1]),
                         StatsSchema(StatsProvider.KVM, StatsTarget.VM, VM_SCHEMA[::-1])])  # fmt: skip
    assert text.index("kvm / vm") < text.index("kvm / vcpu")
    assert "10^-9" in text
    assert "log2-histogram" in text


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


def test_long_names_are_never_cut() -> None:
    name = "a_stat_name_longer_than_any_terminal_" * 4
    text = schemas_text([StatsSchema(StatsProvider.KVM, StatsTarget.VM,
                                     [StatsSchemaValue(name, StatsType.CUMULATIVE)])])  # fmt: skip
    assert name in text


def test_vcpus_are_shown_by_number_and_qom_path() -> None:
    provider = FakeProvider(vcpus=2)
    schemas = index_schemas(list(provider.schemas()))
    results = list(provider.stats(StatsTarget.VCPU, None, None))[::-1]
    text = results_text(StatsTarget.VCPU, results, schemas, {vcpu_path(1): 1, vcpu_path(0): 0})
    assert f"kvm: vCPU 0 ({vcpu_path(0)})\n" in text
    assert f"kvm: vCPU 1 ({vcpu_path(1)})\n" in text
