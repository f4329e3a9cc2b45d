"""A real libvirt for the tests and benchmarks: libvirtd started if it does not run, and
domains with no disk that idle in SeaBIOS.

Debian 12's libvirt (9.0) runs without systemd as ``virtlogd -d; libvirtd -d``.  It runs
QEMU as ``libvirt-qemu`` (group kvm), so ``/dev/kvm`` must be ``root:kvm 0660`` while it
runs; what it was is put back afterwards.  Everything here is done through ``virsh`` on
``qemu:///system``, as an operator would.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuids
from pathlib import Path
from types import TracebackType

from vmstats.libvirt.host import libvirt_unavailable_reason as binding_unavailable_reason

URI = "qemu:///system"
PID_FILE = Path("/run/libvirtd.pid")
DOMAIN_PREFIX = "vmstats-test-"


def tool(name: str) -> str | None:
    """A libvirt program's path; the daemons live in /usr/sbin, which a user's PATH may
    lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def virsh(*args: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def libvirt_unavailable_reason() -> str | None:
    """Why a real libvirt cannot be used here, or None."""
    if os.geteuid() != 0:
        return "libvirtd and vmstats serve run as root"
    for program in ("virsh", "libvirtd", "virtlogd"):
        if tool(program) is None:
            return (f"{program} is not installed "
                    "(apt-get install libvirt-daemon-system libvirt-clients)")  # fmt: skip
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm is missing"
    try:
        grp.getgrnam("kvm")
    except KeyError:
        return "there is no kvm group for libvirt's QEMU user"
    return binding_unavailable_reason()


def _pids(comm: str) -> list[int]:
    """The processes named ``comm``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    out.append(int(entry))
    return out


def _running() -> bool:
    return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True,
                          timeout=30).returncode == 0  # fmt: skip


def _wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


class Libvirtd:
    """libvirtd running for a while: started if it was not, with ``/dev/kvm`` made
    usable by its QEMU user; everything put back, and its test domains destroyed, at the
    end."""

    def __init__(self) -> None:
        self.started = False
        self._virtlogd: int | None = None  # the pid of a virtlogd started here
        self._kvm: os.stat_result | None = None

    def __enter__(self) -> Libvirtd:
        self._kvm = os.stat("/dev/kvm")
        os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
        os.chmod("/dev/kvm", 0o660)
        if not _running():
            self.start()
            self.started = True
        return self

    def start(self) -> None:
        if self._virtlogd is None and not _pids("virtlogd"):
            subprocess.run([tool("virtlogd") or "virtlogd", "-d"], check=False,
                           capture_output=True)  # fmt: skip
            self._virtlogd = next(iter(_pids("virtlogd")), None)
        subprocess.run([tool("libvirtd") or "libvirtd", "-d"], check=True, capture_output=True)
        if not _wait_until(_running, 60):
            raise RuntimeError("libvirtd did not answer within 60 s of its start")

    def stop(self) -> None:
        """Stop libvirtd (its domains keep running, as with a real restart)."""
        pid = int(PID_FILE.read_text())
        os.kill(pid, signal.SIGTERM)
        if not _wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60):
            raise RuntimeError("libvirtd did not stop within 60 s")

    def restart(self) -> None:
        self.stop()
        self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            for name in virsh("list", "--name").split():
                if name.startswith(DOMAIN_PREFIX):
                    destroy(name)
        if self.started:
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                self.stop()
        if self._virtlogd is not None:
            with contextlib.suppress(OSError):
                os.kill(self._virtlogd, signal.SIGTERM)
            # gone before the next start looks for one (an exiting one would be taken)
            gone = f"/proc/{self._virtlogd}"
            _wait_until(lambda: not Path(gone).exists(), 30)
        for log in Path("/var/log/libvirt/qemu").glob(f"{DOMAIN_PREFIX}*.log*"):
            log.unlink(missing_ok=True)  # one per test domain: they would pile up
        if self._kvm is not None:
            os.chown("/dev/kvm", self._kvm.st_uid, self._kvm.st_gid)
            os.chmod("/dev/kvm", self._kvm.st_mode & 0o7777)


#: Where QEMU 10.0 is copied for libvirt's QEMU user (who cannot enter /root).
EMULATOR_ROOT = Path("/var/lib/vmstats-testing/qemu-10")

#: libvirt runs ``<emulator>`` as its QEMU user, so the tree must be readable by it; and
#: QEMU falls back to the installed (7.2) module directory for a module 10.0 lacks, whose
#: loading makes 10.0 abort (libvirt's capability probe, ``qom-list-types``, loads them
#: all).  The wrapper gives 10.0 its firmware and, in a mount namespace of its own (a user
#: namespace: no privilege needed), its own modules where 7.2's are.
_WRAPPER = """#!/bin/sh
R={root}
exec unshare --map-root-user --mount --propagation private sh -c '
  mount --bind "$0"/usr/lib/x86_64-linux-gnu/qemu /usr/lib/x86_64-linux-gnu/qemu &&
  exec "$0"/usr/bin/qemu-system-x86_64 -L "$0"/usr/share/qemu -L "$0"/usr/share/seabios "$@"
' "$R" "$@"
"""


def qemu10_emulator() -> tuple[str | None, str]:
    """A QEMU 10.0 libvirt 9.0 can run as a domain's ``<emulator>`` (copied from the
    unpacked tree, with a wrapper), or None and why not."""
    from vmstats.testing.qemu10 import CACHE, qemu10_binary

    if qemu10_binary() is None:
        return None, f"QEMU 10.0 is not unpacked in {CACHE} (python -m vmstats.testing.qemu10)"
    wrapper = EMULATOR_ROOT / "qemu-wrapper"
    if not wrapper.exists():
        shutil.rmtree(EMULATOR_ROOT, ignore_errors=True)
        EMULATOR_ROOT.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copytree(CACHE, EMULATOR_ROOT, symlinks=True)
        for path in [EMULATOR_ROOT, *EMULATOR_ROOT.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        temporary = wrapper.with_suffix(".new")
        temporary.write_text(_WRAPPER.format(root=EMULATOR_ROOT))
        temporary.chmod(0o755)
        temporary.rename(wrapper)
    probe = subprocess.run(["su", "-s", "/bin/sh", "libvirt-qemu", "-c", f"{wrapper} --version"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    if probe.returncode != 0 or "version 10." not in probe.stdout:
        return None, f"QEMU 10.0 does not run as libvirt's QEMU user: {probe.stderr.strip()}"
    return str(wrapper), ""


def domain_xml(name: str, vcpus: int = 2, max_vcpus: int | None = None,
               emulator: str | None = None) -> str:  # fmt: skip
    """A KVM domain with no disk: it starts at once and idles in SeaBIOS."""
    top = max(vcpus, max_vcpus or vcpus)
    devices = f"<emulator>{emulator}</emulator>" if emulator else ""
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuids.uuid4()}</uuid>"
            "<memory unit='MiB'>128</memory>"
            f"<vcpu placement='static' current='{vcpus}'>{top}</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<features><acpi/></features>"
            f"<devices>{devices}</devices></domain>")  # fmt: skip


def create(name: str, vcpus: int = 2, max_vcpus: int | None = None,
           emulator: str | None = None) -> str:  # fmt: skip
    """Start a transient test domain; its UUID."""
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as file:
        file.write(domain_xml(name, vcpus, max_vcpus, emulator))
        file.flush()
        virsh("create", file.name)
    return virsh("domuuid", name).strip()


def destroy(name: str) -> None:
    virsh("destroy", name, check=False)


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def domstats(name: str, *groups: str) -> dict[str, str]:
    """``virsh domstats`` of a domain as a dict (values as virsh prints them)."""
    out = {}
    for line in virsh("domstats", *groups, name).splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            out[key] = value
    return out


def taints(name: str) -> list[str]:
    """What libvirt says taints the domain: ``virsh dominfo``'s messages and its log."""
    found = [line.strip() for line in virsh("dominfo", name).splitlines() if "taint" in line]
    log = Path(f"/var/log/libvirt/qemu/{name}.log")
    if log.exists():
        found += [line.strip() for line in log.read_text(errors="replace").splitlines()
                  if "taint" in line]  # fmt: skip
    return found
