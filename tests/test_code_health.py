"""The code stays type-checked (mypy --strict over src, tests and benchmarks) and lint-clean
(ruff): checked in the test run, so CI catches what a local run might skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [
    ["mypy"],  # files and strictness from pyproject.toml
    ["ruff", "check", "src", "tests", "benchmarks"],
    ["ruff", "format", "--check", "src", "tests", "benchmarks"],
])  # fmt: skip
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
