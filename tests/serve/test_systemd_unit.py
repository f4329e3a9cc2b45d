"""contrib/systemd/vmstats.service: the capabilities it grants are the ones the daemon's
fd discovery needs, and systemd rates its sandboxing (offline: no systemd runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmstats import caps
from vmstats.cli.serve import FD_DISCOVERY

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "vmstats.service"


def settings(name: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
            if line.startswith(f"{name}=")]  # fmt: skip


def test_the_unit_grants_the_capabilities_fd_discovery_needs_and_no_more() -> None:
    """Fd discovery's two, and CAP_CHOWN: an ordinary user's VM socket is given to them."""
    needed = sorted(caps.NAMES[c] for c in (*FD_DISCOVERY, caps.CAP_CHOWN))
    assert sorted(settings("AmbientCapabilities")[0].split()) == needed
    assert sorted(settings("CapabilityBoundingSet")[0].split()) == needed
    assert settings("User") == ["vmstats"]
    assert settings("NoNewPrivileges") == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_rates_the_units_exposure_low() -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    found = re.search(r"Overall exposure level for vmstats.service: (\d+\.\d)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.5  # "OK"; the unit as root scored 5.6 MEDIUM
