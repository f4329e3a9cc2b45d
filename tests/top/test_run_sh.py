"""``./run.sh`` in a real terminal (tmux): the demo VM with its live view; Ctrl-C exits 0."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kvm, requires_kvm,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]  # fmt: skip


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("vcpus", [2, 64])
def test_run_sh_shows_live_stats_and_ctrl_c_exits_0(vcpus: int, tmp_path: Path) -> None:
    session = f"vmstats-{uuid.uuid4().hex[:8]}"
    status = tmp_path / "status"
    command = f"{ROOT}/run.sh demo --vcpus {vcpus} --interval 0.5; echo $? > {status}; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", session)
            if "halt_exits" in screen and "/s" in screen:
                break
            time.sleep(0.3)
        assert f"vmstats demo: {vcpus} vCPUs" in screen, screen
        assert "halt_exits" in screen, screen
        assert "/s" in screen, screen  # rates on an 80x24 screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        tmux("send-keys", "-t", session, "C-c")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not status.exists():
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
        assert "Traceback" not in tmux("capture-pane", "-p", "-t", session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
