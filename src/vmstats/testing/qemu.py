"""Start a real QEMU with KVM and talk raw QMP to it, byte for byte.

Used by the differential tests (our answers against QEMU's, for the same bytes in) and by
the benchmarks.  Raw on purpose: a client library would hide exactly the bytes we compare.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

QEMU_BINARY = "qemu-system-x86_64"


def qemu_unavailable_reason() -> str | None:
    """Why a KVM-accelerated QEMU cannot run here, or None when it can."""
    if shutil.which(QEMU_BINARY) is None:
        return f"{QEMU_BINARY} is not installed (apt-get install qemu-system-x86)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    return None


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10
) -> int | None:
    """Send ``sig`` (if it still runs), wait ``timeout`` seconds, then kill; close its
    pipes.  Returns its exit status, or None if it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class RawQMP:
    """A QMP connection that returns replies as the exact bytes QEMU sent."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buffer = b""
        self.greeting = self.read_line()

    def read_line(self) -> bytes:
        """One reply line, including its line terminator.

        Big replies (hundreds of KiB for hundreds of vCPUs) come in many reads: only each
        new read is searched for the end of line, and the pieces are joined once, so the
        client's own cost stays linear and the timings measure the server.
        """
        if b"\n" not in self._buffer:
            pieces = [self._buffer]
            while True:
                chunk = self.sock.recv(1 << 18)
                if not chunk:
                    raise ConnectionError("QMP connection closed")
                pieces.append(chunk)
                if b"\n" in chunk:
                    break
            self._buffer = b"".join(pieces)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, data: bytes | dict[str, Any]) -> bytes:
        """Send one request and return the next reply line that is not an event."""
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        self.send(data)
        while True:
            line = self.read_line()
            if not line.startswith(b'{"timestamp"') and b'"event"' not in line[:40]:
                return line

    def negotiate(self) -> bytes:
        return self.request(b'{"execute": "qmp_capabilities"}')

    def close(self) -> None:
        self.sock.close()


class QemuVM:
    """A QEMU guest with KVM, no disk, a QMP unix socket; stopped on exit.  Debian's QEMU
    7.2 by default; ``binary`` and ``extra_args`` run another (see :mod:`.qemu10`)."""

    def __init__(
        self,
        vcpus: int = 1,
        *,
        paused: bool = False,
        memory_mb: int = 64,
        max_vcpus: int | None = None,
        binary: str = QEMU_BINARY,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.extra_args = list(extra_args)
        self.vcpus = vcpus
        self.max_vcpus = max_vcpus  # room for hot-plugged vCPUs
        self.paused = paused
        self.memory_mb = memory_mb
        self._tmp = tempfile.TemporaryDirectory(prefix="vmstats-qemu-")
        self.qmp_path = Path(self._tmp.name) / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QemuVM:
        maxcpus = max(self.vcpus, self.max_vcpus or 1, 1)
        args = [
            self.binary,
            *self.extra_args,
            "-accel",
            "kvm",
            "-m",
            str(self.memory_mb),
            "-smp",
            f"{self.vcpus},maxcpus={maxcpus}",
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.paused:
            args.append("-S")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while not self.qmp_path.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise TimeoutError("QEMU did not create its QMP socket in 60 s")
            time.sleep(0.02)
        return self

    def connect(self, negotiate: bool = True) -> RawQMP:
        qmp = RawQMP(self.qmp_path)
        if negotiate:
            qmp.negotiate()
        return qmp

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        self._tmp.cleanup()

    def __enter__(self) -> QemuVM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
