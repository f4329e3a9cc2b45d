"""A path the system will not look at (a name too long, a folder not ours to enter) is
one line and an exit status from every command that takes one, never a traceback.  Run
here with a name too long for the file system, which root meets as any user does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOO_LONG = "x" * 300  # NAME_MAX is 255


@pytest.mark.parametrize(("command", "status", "said"), [
    (["top", "{long}", "--json", "-1"], 1, "File name too long"),
    (["top", "{long}/a.qmp", "--json", "-1"], 1, "File name too long"),
    (["top", "--replay", "{long}", "-c"], 1, "vmstats top: cannot read {long}: File name too long"),
    (["record", "{tmp}/none.sock", "-o", "{long}/r.jsonl", "--duration", "0.3"], 2,
     "vmstats record: cannot write {long}/r.jsonl: folder {long} cannot be used: File name "
     "too long"),
    (["exporter", "{long}", "--listen", "127.0.0.1:0"], 2,
     "vmstats exporter: {long}: cannot be reached: File name too long"),
    (["demo", "--headless", "--qmp", "{long}/x.sock"], 2,
     "cannot create {long}/x.sock: folder {long} cannot be used: File name too long"),
])  # fmt: skip
def test_a_path_that_cannot_be_looked_at_is_one_line(
    tmp_path: Path, command: list[str], status: int, said: str
) -> None:
    names = {"long": f"{tmp_path}/{TOO_LONG}", "tmp": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "vmstats",
                          *[arg.format(**names) for arg in command]],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "Traceback" not in out.stderr
    assert out.returncode == status
    assert said.format(**names) in out.stderr.splitlines()[-1]
