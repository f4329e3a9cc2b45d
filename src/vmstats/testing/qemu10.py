"""QEMU 10.0 beside Debian 12's QEMU 7.2: unpacked from bookworm-backports, not installed.

Installing bookworm-backports' ``qemu-system-x86`` would replace 7.2, which the
differential tests need, so its three packages are downloaded and unpacked into a cache
folder instead.  The mirror is the one this machine's apt sources already name.
``python -m vmstats.testing.qemu10`` fetches it (as root, with apt) and prints the
binary's path; :func:`qemu10_binary` finds it afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmstats.testing.qemu import QemuVM

PACKAGES = ("qemu-system-x86", "qemu-system-data", "qemu-system-common")
SUITE = "bookworm-backports"
#: Where the unpacked tree lives; ``VMSTATS_QEMU10_DIR`` overrides it.
CACHE = Path(os.environ.get("VMSTATS_QEMU10_DIR", Path.home() / ".cache" / "vmstats" / "qemu-10"))


def qemu10_binary(root: Path = CACHE) -> Path | None:
    """The unpacked QEMU 10 binary, or None when it has not been fetched."""
    binary = root / "usr" / "bin" / "qemu-system-x86_64"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def qemu10_firmware_args(root: Path = CACHE) -> list[str]:
    """``-L`` options so that the unpacked QEMU finds its own firmware."""
    return ["-L", str(root / "usr/share/qemu"), "-L", str(root / "usr/share/seabios")]


def debian_mirror() -> str | None:
    """The Debian mirror this machine's apt sources name (no host is written anywhere)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if path.suffix in (".sources", ".list", "") and path.is_file():
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for match in re.finditer(r"(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text):
            if "security" not in match.group(1):
                return match.group(1)
    return None


def fetch(root: Path = CACHE) -> Path:
    """Download and unpack QEMU 10 from bookworm-backports; return the binary's path."""
    found = qemu10_binary(root)
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("apt-get and dpkg are needed to fetch QEMU 10.0")
    mirror = debian_mirror()
    if mirror is None:
        raise RuntimeError("no Debian mirror found in /etc/apt/sources.list*")
    with tempfile.TemporaryDirectory(prefix="vmstats-qemu10-") as tmp:
        work = Path(tmp)
        source_list = work / "backports.list"
        source_list.write_text(f"deb {mirror} {SUITE} main\n")
        lists = work / "lists"
        (lists / "partial").mkdir(parents=True)
        options = [
            "-o", f"Dir::Etc::sourcelist={source_list}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "APT::Get::List-Cleanup=0",
            "-o", f"Dir::State::Lists={lists}",
            "-o", "APT::Sandbox::User=root",  # the temporary folder is not _apt's
        ]  # fmt: skip
        subprocess.run(["apt-get", "update", "-qq", *options], check=True)
        subprocess.run(["apt-get", "download", "-qq", *options,
                        *(f"{p}/{SUITE}" for p in PACKAGES)], check=True, cwd=work)  # fmt: skip
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="qemu-10.", dir=root.parent))
        for deb in sorted(work.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    binary = qemu10_binary(root)
    if binary is None:
        raise RuntimeError(f"no {root}/usr/bin/qemu-system-x86_64 in the {SUITE} packages")
    return binary


def main() -> int:
    try:
        print(fetch())
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"vmstats: cannot fetch QEMU 10.0: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def qemu10_vm(vcpus: int = 1, extra_args: Sequence[str] = (), **kwargs: Any) -> QemuVM:
    """A :class:`QemuVM` running the unpacked QEMU 10 (fetch it first)."""
    binary = qemu10_binary()
    if binary is None:
        raise RuntimeError("QEMU 10.0 is not fetched: python -m vmstats.testing.qemu10")
    return QemuVM(vcpus, binary=str(binary), extra_args=[*qemu10_firmware_args(), *extra_args],
                  **kwargs)  # fmt: skip


def qemu10_unavailable_reason() -> str | None:
    """Why a QEMU 10.0 cannot run here, or None."""
    if qemu10_binary() is None:
        return f"QEMU 10.0 is not unpacked in {CACHE} (python -m vmstats.testing.qemu10)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    return None
