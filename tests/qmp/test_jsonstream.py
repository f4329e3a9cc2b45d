"""The JSON streamer against QEMU 7.2's observed behaviour (rows from a live QEMU)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.qmp.reference_stream import JSONStreamParser as ReferenceParser
from tests.qmp.reference_stream import Message as ReferenceMessage
from vmstats.qmp.jsonstream import JSONStreamParser, Message
from vmstats.qmp.jsonstream.streamer import REPEAT_MESSAGES, SLICE

PARSE_ERROR = "JSON parse error, "

ROWS: list[tuple[bytes, list[Message]]] = [
    (b'{"execute":!}', [Message(error=PARSE_ERROR + "stray '!'"),
                       Message(error=PARSE_ERROR + "expecting value")]),
    (b"3", []),  # a number is complete only when something follows it
    (b"3 ", [Message(value=3)]),
    (b'"str"', [Message(value="str")]),
    (b"[1", []),
    (b'{"a":1,"a":2}', [Message(error=PARSE_ERROR + "duplicate key")]),
    (b"nul ", [Message(error=PARSE_ERROR + "invalid keyword 'nul'")]),
    (b'{"execute":"x"}}', [Message(value={"execute": "x"}),
                          Message(error=PARSE_ERROR + "expecting value")]),
    (b"}", [Message(error=PARSE_ERROR + "expecting value")]),
    (b"\xff", [Message(error=PARSE_ERROR + "stray '\ufffd'")]),
    (b'{"id":"a\x01b"}', [Message(error=PARSE_ERROR + "stray '\"a\x01'"),
                         Message(error=PARSE_ERROR + "expecting value")]),
    (b'{"id":01}', [Message(error=PARSE_ERROR + "stray '01'"),
                   Message(error=PARSE_ERROR + "expecting value")]),
    (b'{"id":"\\ud800"}', [Message(error=PARSE_ERROR + "\\ud800 is not a valid Unicode character")]),
    (b'{"id":"\\uD83D\\uDE00"}', [Message(value={"id": "\U0001f600"})]),
    (b'{"id":"\\u0000"}', [Message(value={"id": "\x00"})]),
    (b'{"id":"\xc3\xa9"}', [Message(value={"id": "\u00e9"})]),
    (b'{"id":"\xc3"}', [Message(error=PARSE_ERROR + "invalid UTF-8 sequence in string")]),
    (b'{"id":"\xef\xb7\x90"}', [Message(error=PARSE_ERROR + "invalid UTF-8 sequence in string")]),
    (b'{"id":"\\x"}', [Message(error=PARSE_ERROR + "invalid escape sequence in string")]),
    (b'{"id":[1,]}', [Message(error=PARSE_ERROR + "expecting value")]),
    (b'{"id":{1:2}}', [Message(error=PARSE_ERROR + "key is not a string in object")]),
    (b'{"a" 1}', [Message(error=PARSE_ERROR + "missing : in object pair")]),
    (b'{"a":1 "b":2}', [Message(error=PARSE_ERROR + "expected separator in dict")]),
    (b"[1 2]", [Message(error=PARSE_ERROR + "expected separator in list")]),
    (b'{"id": %d}', [Message(error=PARSE_ERROR + "stray '%'"),
                    Message(error=PARSE_ERROR + "expecting value")]),
    (b"{,}", [Message(error=PARSE_ERROR + "expecting value")]),
    (b"{'a':'b\"c'}", [Message(value={"a": 'b"c'})]),
    (b'{"a":18446744073709551615,"b":18446744073709551616,"c":-9223372036854775809}',
     [Message(value={"a": 18446744073709551615, "b": 1.8446744073709552e19,
                     "c": -9.223372036854775809e18})]),
    (b'{"a":1e2,"b":-0.5E-1}', [Message(value={"a": 100.0, "b": -0.05})]),
    (b'{"a":1}{"b":2}', [Message(value={"a": 1}), Message(value={"b": 2})]),
    (b' \t\r\n[]', [Message(value=[])]),
    # found by differential fuzzing against QEMU:
    (b"\x00", [Message(error=PARSE_ERROR + "stray ''")]),  # C string: ends at NUL
    (b'{"id":"\\u-\x7f\xf0\x9f\x98\x80"}',
     [Message(error=PARSE_ERROR + "\\u-\x7f\ufffd is not a valid Unicode character")]),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), ROWS)
def test_stream_matches_qemu(data: bytes, expected: list[Message]) -> None:
    assert JSONStreamParser().feed(data) == expected


@pytest.mark.parametrize(("data", "expected"), ROWS)
def test_byte_by_byte_feeding_gives_the_same_messages(data: bytes, expected: list[Message]) -> None:
    parser = JSONStreamParser()
    got = [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]
    assert got == expected


def test_recovery_resumes_at_structural_characters() -> None:
    parser = JSONStreamParser()
    assert parser.feed(b'@@@ junk {"a":1}') == [
        Message(error="JSON parse error, stray '@'"),
        Message(value={"a": 1}),
    ]


def test_size_limit_drops_the_message_and_recovers() -> None:
    parser = JSONStreamParser(max_message_size=100)
    out = parser.feed(b'{"a":"' + b"x" * 200 + b'"}')
    assert Message(error="JSON token size limit exceeded") in out
    assert parser.feed(b'\xff\n{"b":1}')[-1] == Message(value={"b": 1})


def test_nesting_limit() -> None:
    out = JSONStreamParser().feed(b"[" * 1100)
    assert out == [Message(error="JSON nesting depth limit exceeded")]


def test_flush_at_end_of_input_completes_a_number() -> None:
    parser = JSONStreamParser()
    assert parser.feed(b"42") == []
    assert parser.flush() == [Message(value=42)]


# -- the fast streamer against the byte-at-a-time reference --------------------------

ALPHABET = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"'", b"\\", b"\\u", b"\\uD83D", b"00",
            b"1", b"-", b"-0", b".5", b"e", b"E+", b"12", b"true", b"nul", b"x", b" ", b"\t",
            b"\n", b"\x00", b"\x01", b"\x7f", b"\xc3\xa9", b"\xc3", b"\xef\xb7\x90", b"\xfe",
            b"\xff", b'"a"', b"'b'", b'"execute"', b"[[[[", b"]]]]", b",,,,", b"::"]  # fmt: skip
STREAMS = st.lists(st.sampled_from(ALPHABET) | st.binary(max_size=3), max_size=60).map(b"".join)


def _reference(data: bytes, size: int, tokens: int) -> list[Message]:
    parser = ReferenceParser(size, tokens)
    out = [ReferenceMessage(m.value, m.error) for m in parser.feed(data)] + parser.flush()
    return [Message(m.value, m.error) for m in out]


def _fast(data: bytes, size: int, tokens: int, cuts: list[int]) -> list[Message]:
    parser = JSONStreamParser(size, tokens)
    out: list[Message] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += parser.feed(data[start:cut])
        start = max(start, cut)
    return out + parser.flush()


@settings(max_examples=1500, deadline=None)
@given(data=STREAMS, size=st.sampled_from([8, 16, 64, 1 << 20]),
       tokens=st.sampled_from([3, 10, 1 << 20]), cuts=st.lists(st.integers(0, 200), max_size=5))  # fmt: skip
def test_fast_streamer_equals_the_reference(data: bytes, size: int, tokens: int,
                                            cuts: list[int]) -> None:  # fmt: skip
    assert _fast(data, size, tokens, cuts) == _reference(data, size, tokens)


@pytest.mark.parametrize("data", [
    b"[" * 1024 + b"]" * 1024, b"[" * 1025, b"[" * 3000 + b"]", b"{" * 2000,
    b"[" + b"," * 5000, b",,,,", b"[" + b"1," * 2000 + b"1]", b'["' + b"x" * 5000 + b'"]',
    b'"' + b"y" * 70 + b'"', b"1" * 70 + b" ", b"a" * 70 + b" ", b"[" + b" " * 300 + b"]",
])  # fmt: skip
@pytest.mark.parametrize("size", [64, 1 << 20])
def test_long_runs_equal_the_reference(data: bytes, size: int) -> None:
    limit = sys.getrecursionlimit()
    # the reference parser recurses per level, and so does comparing nested values
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        same = _fast(data, size, 4096, [len(data) // 3]) == _reference(data, size, 4096)
    finally:
        sys.setrecursionlimit(limit)
    assert same


def test_nesting_at_qemus_limit_parses_without_recursion() -> None:
    text = b"[" * 1024 + b"7" + b"]" * 1024
    (message,) = JSONStreamParser().feed(text)
    value, depth = message.value, 0
    while isinstance(value, list):  # == on the value would recurse
        (value,), depth = value, depth + 1
    assert (value, depth) == (7, 1024)
    deep_dict = b'{"a":' * 1024 + b"1" + b"}" * 1024
    (message,) = JSONStreamParser().feed(deep_dict)
    assert message.error is None


def test_token_count_limit_is_qemus_error() -> None:
    out = JSONStreamParser(max_tokens=100).feed(b"[" + b"1," * 200 + b"1]")
    assert out[0] == Message(error="JSON token count limit exceeded")


def test_a_half_sent_message_holds_about_its_own_size() -> None:
    parser = JSONStreamParser(1 << 20, 1 << 20)
    parser.feed(b"[" + b"," * 1_048_000)
    assert parser.holding < 1_100_000  # bytes, not ~100 bytes per token


def test_next_message_works_in_slices() -> None:
    parser = JSONStreamParser()
    parser.receive_data(b"[" + b"1 ," * SLICE + b"1]")
    calls = 0
    while (message := parser.next_message()) is None:
        assert parser.buffered
        calls += 1
    assert message.value == [1] * (SLICE + 1)
    assert calls >= 2


# -- the memory of repeated reads -----------------------------------------------------

ONE = b'{"execute": "query-stats", "arguments": {"target": "vm"}}'
TOP = ONE + b'{"execute": "query-stats", "arguments": {"target": "vcpu"}}'  # top's, per VM


@pytest.mark.parametrize("read", [ONE, TOP, ONE * REPEAT_MESSAGES], ids=["one", "two", "most"])
def test_a_read_of_requests_seen_before_is_taken_from_memory(read: bytes) -> None:
    """A polling client sends the same bytes at every refresh: the second time its
    requests are the very messages of the first (and the dispatcher's checks of them,
    done once per message object, are not done again)."""
    parser = JSONStreamParser()
    first = parser.feed(read)
    again = parser.feed(read)
    assert [m.error for m in first] == [None] * (read.count(b"execute"))
    assert len(again) == len(first)
    assert all(a is b for a, b in zip(again, first, strict=True))


@pytest.mark.parametrize("read", [
    ONE * (REPEAT_MESSAGES + 1),  # more than a read may hold
    ONE + b"{,}",  # an error in it
    ONE + b" {}",  # fine: taken (below) as a control that the others are not
], ids=["too-many", "error", "control"])  # fmt: skip
def test_a_read_not_all_requests_is_lexed_every_time(read: bytes) -> None:
    parser = JSONStreamParser()
    first = parser.feed(read)
    again = parser.feed(read)
    assert again == first
    remembered = all(a is b for a, b in zip(again, first, strict=True))
    assert remembered == read.endswith(b" {}")


def test_a_read_cut_in_a_request_is_not_remembered() -> None:
    cut = ONE + b'{"execute": "query-stats", "arguments": {"target": "vm"}'  # ends in }
    parser = JSONStreamParser()
    first = parser.feed(cut)  # the second request is cut: this read is no repeat
    assert len(parser.feed(b"}")) == 1  # the second, whole
    again = parser.feed(cut)
    assert again == first == [Message({"execute": "query-stats", "arguments": {"target": "vm"}})]
    assert again[0] is not first[0]


@settings(max_examples=500, deadline=None)
@given(data=STREAMS)
def test_reads_repeated_give_what_the_reference_gives(data: bytes) -> None:
    """From memory or not, three equal reads are the reference's messages for the three."""
    read = b"{" + data + b"}"
    parser = JSONStreamParser(1 << 20, 1 << 20)
    out = [m for _ in range(3) for m in parser.feed(read)] + parser.flush()
    assert out == _reference(read * 3, 1 << 20, 1 << 20)


def test_a_read_that_arrives_before_the_last_is_lexed_ends_its_memory() -> None:
    """Two reads lexed together are not the first read's messages."""
    parser = JSONStreamParser()
    parser.receive_data(ONE)
    parser.receive_data(TOP)
    while parser.next_message() is not None or parser.buffered:
        pass
    assert len(parser.feed(ONE)) == 1
