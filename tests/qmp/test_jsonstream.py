"""The JSON streamer against QEMU 7.2's observed behaviour (rows from a live QEMU)."""

from __future__ import annotations

import pytest

from vmstats.qmp.jsonstream import JSONStreamParser, Message

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
