"""The run directory: the daemon takes only a directory of its own, and changes nothing
of one it refuses (it runs as root: given ``/tmp`` or ``/etc`` it set their modes)."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from vmstats.errors import RunDirUnfit
from vmstats.qmp.server import STAGING_PREFIX
from vmstats.serve.rundir import RunDir
from vmstats.testing.fleet import Fleet
from vmstats.testing.hostile import wait_for
from vmstats.testing.qemu import stop_process


def shared(path: Path) -> None:
    """Like /tmp: everyone may write in it."""
    path.mkdir()
    path.chmod(0o1777)


def another_users(path: Path) -> None:
    path.mkdir()
    os.chown(path, 65534, -1)


def holding_a_file(path: Path) -> None:
    path.mkdir()
    (path / "passwd").write_text("not ours\n")


def a_link(path: Path) -> None:
    (path.parent / "elsewhere").mkdir()
    path.symlink_to(path.parent / "elsewhere")


def mode_owner_entries(path: Path) -> tuple[int, int, list[str]]:
    st = path.lstat()
    return st.st_mode, st.st_uid, sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else []


@pytest.mark.parametrize(("make", "why"), [
    (shared, "may be written by others (mode 1777)"),
    (another_users, "belongs to nobody (uid 65534), not to this daemon's user"),
    (holding_a_file, "holds files that are not an earlier run's (1 of them)"),
    (a_link, "is a symbolic link: give the directory itself"),
])  # fmt: skip
def test_a_directory_not_its_own_is_refused_and_left_as_it_was(
    tmp_path: Path, make: Callable[[Path], None], why: str
) -> None:
    if make is another_users and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    path = tmp_path / "run"
    make(path)
    before = mode_owner_entries(path)
    with pytest.raises(RunDirUnfit, match=re.escape(why)):
        RunDir(path, group=os.getegid()).claim()
    assert mode_owner_entries(path) == before
    assert not (path.parent / "elsewhere" / ".lock").exists()


def test_a_new_an_empty_and_an_earlier_runs_directory_are_taken(tmp_path: Path) -> None:
    new = tmp_path / "new" / "run"
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    for path in (new, empty, new):  # new again: an earlier run's, with its .lock
        run_dir = RunDir(path)
        run_dir.claim()
        run_dir.write_state([])
        assert stat.S_IMODE(path.stat().st_mode) == 0o751
        assert (path / ".lock").read_text() == f"{os.getpid()}\n"
        run_dir.release()
    with socket.socket(socket.AF_UNIX) as half_made:  # a run that died before its rename
        half_made.bind(str(new / f"{STAGING_PREFIX}0123abcd"))
    assert sorted(os.listdir(new)) == [".lock", f"{STAGING_PREFIX}0123abcd"]
    run_dir = RunDir(new)
    run_dir.claim()  # and what it left is gone
    assert sorted(os.listdir(new)) == [".lock"]
    run_dir.release()


def test_the_command_says_why_in_one_line(tmp_path: Path) -> None:
    holding_a_file(tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith(f"vmstats serve: {tmp_path / 'run'} holds files that are not "
                                 "an earlier run's (1 of them): ")  # fmt: skip
    assert out.stderr.count("\n") == 1
    empty = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--run-dir", ""],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert empty.returncode == 2
    assert empty.stderr.endswith("argument --run-dir: an empty path: give the directory\n")
    assert not (tmp_path / ".lock").exists()


def listing(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmstats", "list", str(run_dir)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.kvm
@requires_kvm
@pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")
def test_the_list_of_a_daemon_killed_outright_is_not_shown_as_served(tmp_path: Path) -> None:
    """SIGKILL leaves ``vms.json`` and the sockets behind: ``vmstats list`` showed the VMs
    as served.  It says no daemon runs, and the next daemon takes the directory again."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "vmstats", "serve", "--run-dir", str(run_dir),
               "--scan-interval", "0.3", "--tracepoints", "none"]  # fmt: skip
    with Fleet(2, prefix="killed") as fleet:
        (name,) = fleet.start(1)
        first = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: name in listing(run_dir).stdout, timeout=60)
        finally:
            first.kill()
            first.wait()
        out = listing(run_dir)
        assert (out.returncode, out.stdout) == (1, "")
        assert out.stderr.startswith(f"vmstats list: no vmstats serve runs with {run_dir}: its "
                                     "list is a daemon's that ended without removing it "
                                     f"(killed?), and nothing listens at {run_dir}/")  # fmt: skip
        assert out.stderr.endswith(".qmp\n")  # another VM of this host's, maybe
        second = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: listing(run_dir).returncode == 0, timeout=60)
            assert name in listing(run_dir).stdout
        finally:
            assert stop_process(second) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a lock of another user's needs root to make")
def test_a_lock_left_by_another_user_is_said_in_one_line(tmp_path: Path) -> None:
    """Root ran the daemon by hand, then the unit runs it as its own user, who cannot
    open root's .lock (0600).  Root opens any file, so a .lock that is a directory stands
    here for a lock that will not open."""
    path = tmp_path / "run"
    path.mkdir(mode=0o751)
    (path / ".lock").mkdir()
    with pytest.raises(
        RunDirUnfit,
        match=re.escape(
            f"cannot use {path} as the run directory: its .lock cannot be opened (Is a directory)"
        ),
    ):
        RunDir(path).claim()
