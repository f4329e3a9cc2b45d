"""The demo VM in a process of its own, its stats fds handed to us over ``SCM_RIGHTS``.

Why a second process: a Python VMM needs the GIL for every exit, and a busy stats server
in the same process starves it (measured: no guest progress at all during 1,000 queries).
KVM only lets the creating process run the vCPUs, so the VM lives in the child and the
*read-only stats fds* come to the parent, exactly as a daemon holds a VMM's fds.  The
child stops when the parent closes the socket, exits, or sends SIGTERM; it ignores SIGINT,
which Ctrl-C sends to the whole process group: the parent decides when the VM stops.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from types import TracebackType

from vmstats.demo.guest import GuestProgram
from vmstats.errors import GuestError, KvmUnavailable
from vmstats.kvm.binstats import StatsFile
from vmstats.kvm.ioctl import kvm_unavailable_reason
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.kvm.vmm import VmmProcess

#: Linux accepts at most 253 fds in one SCM_RIGHTS message.
_FDS_PER_MESSAGE = 200


class DemoProcess:
    """Runs :class:`vmstats.demo.DemoVM` in a child; :attr:`provider` reads its stats."""

    def __init__(
        self, vcpus: int = 2, program: GuestProgram | None = None, rate: float = 50.0
    ) -> None:
        self.vcpus = vcpus
        self.program = program or GuestProgram()
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self.provider: KvmStatsProvider | None = None
        self.threads: list[int] = []  # the vCPUs' threads in the child, in vCPU order

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> KvmStatsProvider:
        """Start the VM process; :class:`KvmUnavailable` when KVM cannot be used here."""
        reason = kvm_unavailable_reason()
        if reason is not None:
            raise KvmUnavailable(reason)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {"vcpus": self.vcpus, "rate": self.rate, "program": asdict(self.program)}
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmstats.demo.process",
                    str(theirs.fileno()),
                    json.dumps(config),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._sock = ours
        self.provider = self._receive(ours)
        return self.provider

    def _receive(self, sock: socket.socket) -> KvmStatsProvider:
        message, fds, _, _ = socket.recv_fds(sock, 1 << 16, _FDS_PER_MESSAGE)
        if not message:
            code = self.proc.wait(10) if self.proc else None
            raise GuestError(f"the demo VM process exited ({code}) before it was ready")
        header = json.loads(message)
        if "error" in header:
            raise GuestError(header["error"])
        while len(fds) < header["fds"]:
            _, more, _, _ = socket.recv_fds(sock, 16, _FDS_PER_MESSAGE)
            if not more:
                raise GuestError("the demo VM process stopped while sending its stats fds")
            fds += more
        self.threads = [int(tid) for tid in header.get("threads", [])]
        files = [StatsFile(fd, owned=True) for fd in fds]
        vcpus = [VcpuStatsFile(path, f) for path, f in zip(header["paths"], files[1:], strict=True)]
        return KvmStatsProvider(files[0], vcpus, VmmProcess(self.pid))

    def exit_reason(self) -> str:
        """How the VM process ended, in words ("killed by SIGKILL", "exit status 1")."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """Stop the VM process and close the stats fds; return its exit status."""
        if self._sock is not None:
            self._sock.close()  # the child sees EOF and shuts down cleanly
            self._sock = None
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        if self.provider is not None:
            self.provider.close()
            self.provider = None
        return code

    def __enter__(self) -> DemoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _child(fd: int, config: dict[str, object]) -> int:
    """The VMM side: create the VM, send its stats fds, run until told to stop."""
    from vmstats.demo.vm import DemoVM, qemu_vcpu_path

    sock = socket.socket(fileno=fd)

    def stop_on_signal(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_signal)
    # Ctrl-C reaches the whole process group: the parent decides, and closes our socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        vm = DemoVM(
            int(config["vcpus"]),  # type: ignore[call-overload]
            GuestProgram(**config["program"]),  # type: ignore[arg-type]
            float(config["rate"]),  # type: ignore[arg-type]
        )
    except (OSError, ValueError) as exc:
        sock.send(json.dumps({"error": str(exc)}).encode())
        return 1
    with vm:
        vm.start()  # first, so that its vCPU threads are known (exit reasons count them)
        fds = [file.fd for file in vm.stats_files]
        header = {
            "fds": len(fds),
            "paths": [qemu_vcpu_path(i) for i in range(vm.vcpu_count)],
            "threads": vm.thread_ids,
            "pid": os.getpid(),
        }
        socket.send_fds(sock, [json.dumps(header).encode()], fds[:_FDS_PER_MESSAGE])
        for start in range(_FDS_PER_MESSAGE, len(fds), _FDS_PER_MESSAGE):
            socket.send_fds(sock, [b"fds"], fds[start : start + _FDS_PER_MESSAGE])
        try:
            while sock.recv(16):
                pass
        except (SystemExit, OSError):
            pass
        errors = vm.errors
    for error in errors:
        print(f"vmstats demo: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), json.loads(sys.argv[2])))
