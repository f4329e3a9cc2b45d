"""Tracepoint format files parsed: this kernel's own kvm formats (both ``kvm_exit``
tables, even under PVM where it never fires), and made-up ones that push the parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmstats.trace.format import (
    TraceFormatError,
    _read_privately,
    parse_format,
    read_format,
    read_formats,
)


def test_this_kernels_kvm_exit_has_its_vmx_and_svm_tables(mounted: Path) -> None:
    if not (mounted / "events" / "kvm" / "kvm_exit").is_dir():
        pytest.skip("this kernel has no kvm_exit tracepoint")
    event = read_format("kvm", "kvm_exit", mounted)
    vmx = event.table("exit_reason", "REC->isa == 1")
    svm = event.table("exit_reason", "not REC->isa == 1")
    assert vmx is not None
    assert svm is not None
    assert vmx.of == "REC->exit_reason & 0xffff"  # the basic reason, flags off
    assert {"HLT", "IO_INSTRUCTION", "EPT_VIOLATION"} <= set(vmx.names.values())
    assert {"hlt", "io", "npf"} <= set(svm.names.values())
    assert event.fields["exit_reason"].size == 4
    assert event.id > 0


def test_this_kernels_userspace_exits_name_every_kvm_exit_reason(mounted: Path) -> None:
    if not (mounted / "events" / "kvm" / "kvm_userspace_exit").is_dir():
        pytest.skip("this kernel has no kvm_userspace_exit tracepoint")
    event = read_format("kvm", "kvm_userspace_exit", mounted)
    table = event.table("reason")
    assert table is not None
    assert all(name.startswith("KVM_EXIT_") for name in table.names.values())
    assert {"KVM_EXIT_IO", "KVM_EXIT_HLT", "KVM_EXIT_MMIO"} <= set(table.names.values())
    assert sorted(table.names) == list(range(len(table.names)))  # 0.. with no hole
    assert event.fields["reason"].offset == 8


MADE_UP = r"""name: odd_exit
ID: 7
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:u8 bytes[16];	offset:8;	size:16;	signed:0;
	field:int code;	offset:24;	size:4;	signed:1;

print fmt: "%s %s", (REC->mode == 2) ? __print_symbolic(REC->code >> 1, { 0x10 + 2, "A" "(" "B" }, { -1, "minus, \"one\"" }, { 3UL, "three" }) : __print_symbolic(REC->code, { 1 | 4, "five" }), __print_symbolic(REC->code, { 0, "zero" })
"""


def test_a_made_up_format_with_every_kind_of_entry() -> None:
    event = parse_format("odd", MADE_UP)
    assert (event.name, event.id) == ("odd_exit", 7)
    assert event.fields["bytes"].size == 16
    assert event.fields["code"].signed
    first, second, third = event.tables
    assert first.names == {18: "A(B", -1: 'minus, \\"one\\"', 3: "three"}
    assert (first.when, second.when, third.when) == ("REC->mode == 2", "not REC->mode == 2", "")
    assert second.names == {5: "five"}
    assert third.field == "code"


@pytest.mark.parametrize(("text", "problem"), [
    ("ID: 3\n", "no name line"),
    ("name: x\nID: three\n", "its ID is not a number"),
    ('name: x\nID: 3\nprint fmt: __print_symbolic(REC->a, { 1, "x" }', "unclosed"),
])  # fmt: skip
def test_a_broken_format_is_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(TraceFormatError, match=problem):
        parse_format("kvm", text)


def test_a_table_whose_values_are_not_numbers_is_left_out() -> None:
    """As this kernel's kvm_nested_vmenter_failed, whose values are macro names (the
    format keeps them unexpanded): no value can be told, so the event counts whole."""
    text = ('name: x\nID: 3\nprint fmt: "%s", !REC->err ? "" : __print_symbolic(REC->err, '
            '{ VMXERR_ONE, "ONE" }, { open(1), "x" }), __print_symbolic(REC->b, { 1, "one" })')  # fmt: skip
    assert [t.field for t in parse_format("kvm", text).tables] == ["b"]


def test_an_event_the_kernel_lacks_is_named(mounted: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"^this kernel has no tracepoint kvm:kvm_nosuch$"):
        read_formats("kvm", ["kvm_userspace_exit", "kvm_nosuch"], mounted)


def test_a_star_is_every_event_of_the_system_once(mounted: Path) -> None:
    every = read_formats("kvm", ["kvm_pio", "*"], mounted)
    names = [e.name for e in every]
    assert names[0] == "kvm_pio"
    assert len(names) == len(set(names)) == len(list(mounted.glob("events/kvm/*/format")))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting tracefs privately needs root")
def test_root_reads_the_formats_from_a_tracefs_of_its_own_leaving_the_hosts_mounts() -> None:
    """Where tracefs is not mounted: a child mounts one in its own mount namespace."""
    before = Path("/proc/self/mountinfo").read_text()
    found, missing, events = _read_privately(["events/kvm/kvm_userspace_exit/format",
                                              "events/kvm/kvm_nosuch/format", "events/kvm/"])  # fmt: skip
    assert isinstance(found, str)
    assert parse_format("kvm", found).name == "kvm_userspace_exit"
    assert missing is None
    assert isinstance(events, list)
    assert {"kvm_exit", "kvm_userspace_exit", "kvm_pio"} <= set(events)
    assert "enable" not in events  # a file of the directory, not an event
    assert Path("/proc/self/mountinfo").read_text() == before
