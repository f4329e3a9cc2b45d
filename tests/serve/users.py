"""Users and groups as the access tests play them: uid 65534 connecting with chosen
groups, an ordinary user's VMM, ``/dev/kvm`` opened to the kvm group for a while, and the
system's Python with a world-readable copy of vmstats for them to run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

USER_UID = 1000  # an ordinary user's uid (login.defs' UID_MIN); no account is needed


@contextlib.contextmanager
def kvm_for_group() -> Iterator[int]:
    """``/dev/kvm`` as udev makes it (``root:kvm 0660``) for a while; its gid."""
    import grp

    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no kvm group")
    before = os.stat("/dev/kvm")
    os.chown("/dev/kvm", 0, gid)
    os.chmod("/dev/kvm", 0o660)
    try:
        yield gid
    finally:
        os.chown("/dev/kvm", before.st_uid, before.st_gid)
        os.chmod("/dev/kvm", before.st_mode & 0o7777)


def named_vmm(name: str, env: dict[str, str] | None = None,
              preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """A VMM that keeps its stats fds and says ``-name NAME`` on its command line."""
    code = ("import time; from vmstats.demo.vm import DemoVM; vm = DemoVM(1, rate=1); "
            "vm.start(); print('ready', flush=True); time.sleep(600)")  # fmt: skip
    python = "/usr/bin/python3" if env is not None else sys.executable
    proc = subprocess.Popen([python, "-c", code, "-name", name], stdout=subprocess.PIPE,
                            env=env, preexec_fn=preexec)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


GROUP = 4242  # a group id no account on this machine has


def as_nobody() -> None:
    """A child's ``preexec_fn``: uid and gid 65534, no other group."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def connect_as_nobody(path: Path, groups: list[int],
                      uid: int = 65534) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Connect with the system's Python as ``uid`` (65534) with these supplementary
    groups."""

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(uid)
        os.setuid(uid)

    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror); sys.exit(1)\n"
              "print(s.recv(200).decode())\n")  # fmt: skip
    return subprocess.run(["/usr/bin/python3", "-c", script, str(path)], capture_output=True,
                          text=True, timeout=30, preexec_fn=drop)  # fmt: skip


def imported_by_serve() -> list[str]:
    """The packages besides vmstats and the standard library that ``vmstats serve`` loads."""
    script = ("import sys, vmstats.cli.main, vmstats.cli.serve, vmstats.serve.daemon\n"
              "tops = {m.split('.')[0] for m in sys.modules}\n"
              "files = {m for m in tops if getattr(sys.modules.get(m), '__file__', None)}\n"
              "print(' '.join(sorted(files - set(sys.stdlib_module_names) - "
              "{'vmstats', '__main__', '_distutils_hack'})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return out.split()
