"""The text of a batch column: numbers as a log reader or a spreadsheet reads them."""

from __future__ import annotations

import pytest

from vmstats.top.batch import _text


@pytest.mark.parametrize(("value", "text"), [
    (3986590123.0, "3986590123"),  # %g wrote 3.98659e+09: another number
    (3986590123.25, "3986590123.25"),
    (1049.123, "1049.123"),
    (0.5, "0.5"),
    (12, "12"),
    (None, ""),
])  # fmt: skip
def test_numbers_keep_every_digit(value: float | int | None, text: str) -> None:
    assert _text(value) == text
