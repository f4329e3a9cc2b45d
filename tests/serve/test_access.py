"""Who may read which VM (docs/security.md): ``allow`` rules add groups to the VMs they
select, by the socket's ACL and by the check at accept; SIGHUP changes them at once; the
check at accept refuses a stranger even when the socket's modes let them in."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kvm.conftest import requires_kvm
from tests.serve.conftest import Daemon, rows
from tests.serve.users import GROUP, as_nobody, connect_as_nobody, named_vmm
from vmstats import acl
from vmstats.serve.access import Access, AllowRule, Peer, VmIdentity, allow_rule
from vmstats.testing.hostile import wait_for
from vmstats.testing.qemu import stop_process

DBA, WEB, OPS = 4243, 4244, 4245  # group ids no account on this machine has
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="vmstats serve runs as root")
needs_python = pytest.mark.skipif(not Path("/usr/bin/python3").exists(),
                                  reason="no system python3 to connect as another user")  # fmt: skip


def rule(text: str) -> AllowRule:
    return allow_rule(text)


def test_a_rule_selects_by_every_selector_it_has() -> None:
    db1 = VmIdentity("db1", "root")
    alice = VmIdentity("alice~db2", "alice")
    domain = VmIdentity("web-1", "libvirt-qemu", ("web-1", "6a2d0e22-9a2f-4bd1-a5f0-1d7e1c7b3c11"))
    assert rule("4243:name=db*").selects(db1)
    assert not rule("4243:name=db*").selects(alice)  # a user's VM is USER~NAME
    assert rule("4243:name=*~db*").selects(alice)
    assert rule("4243:owner=alice").selects(alice)
    assert not rule("4243:owner=alice").selects(db1)
    assert rule("4243:name=db*,owner=root").selects(db1)
    assert not rule("4243:name=db*,owner=alice").selects(db1)  # every selector must match
    assert rule("4243:domain=web-*").selects(domain)
    assert rule("4243:domain=6A2D0E22-9A2F-4BD1-A5F0-1D7E1C7B3C11").selects(domain)  # UUID
    assert not rule("4243:domain=*").selects(db1)  # not a libvirt domain
    assert rule("root:name=x").gid == 0  # a group by name


@pytest.mark.parametrize(("text", "problem"), [
    ("4243", "not GROUP:SELECTOR"),
    ("4243:", "not GROUP:SELECTOR"),
    (":name=db*", "not GROUP:SELECTOR"),
    ("4243:colour=red", "'colour=red' is not one of name=GLOB, owner=USER, domain=GLOB"),
    ("4243:name", "is not one of"),
    ("4243:name=", "is not one of"),
    ("4243:name=a,name=b", "name given twice"),
    ("no-such-group-here:name=db*", "no group named 'no-such-group-here'"),
])  # fmt: skip
def test_a_wrong_rule_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        allow_rule(text)
    assert problem in str(caught.value)


def test_the_check_at_accept_lets_in_the_owner_root_the_group_and_the_allowed() -> None:
    access = Access(GROUP, (rule(f"{DBA}:name=db*"),))
    groups = access.groups_for(VmIdentity("db1"))
    assert groups == {DBA}
    assert access.groups_for(VmIdentity("web1")) == frozenset()

    def peer(uid: int, gid: int = 65534, *groups: int) -> Peer:
        return Peer(1, uid, gid, frozenset(groups))

    assert access.admits(peer(0), None, groups)
    assert access.admits(peer(1000), 1000, groups)  # its owner
    assert not access.admits(peer(1001), 1000, groups)
    assert access.admits(peer(65534, 65534, GROUP), None, groups)  # the admin group
    assert access.admits(peer(65534, DBA), None, groups)  # an allowed group, as primary
    assert access.admits(peer(65534, 65534, 7, DBA), None, groups)  # or supplementary
    assert not access.admits(peer(65534, 65534, WEB), None, groups)
    assert not access.admits(peer(65534, 65534, DBA), None, frozenset())


def test_the_acl_is_what_the_kernel_reads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    try:
        acl.set_groups(path, 0o660, [WEB, DBA])
    except OSError as exc:
        pytest.skip(f"no ACLs on {tmp_path}'s file system: {exc}")
    assert acl.groups_of(path) == {DBA: 6, WEB: 6}
    assert os.stat(path).st_mode & 0o777 == 0o660  # the mask shows as the group bits
    acl.set_groups(path, 0o660, [])
    assert acl.groups_of(path) == {}
    assert os.stat(path).st_mode & 0o777 == 0o660


def list_as_nobody(run_dir: Path, groups: list[int], env: dict[str, str]) -> list[str]:
    """The names ``vmstats list`` shows uid 65534 with these groups."""

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(65534)
        os.setuid(65534)

    out = subprocess.run(["/usr/bin/python3", "-m", "vmstats", "list", str(run_dir)],
                         capture_output=True, text=True, env=env, preexec_fn=drop,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("no VM"):
        return []
    return [line.split()[0] for line in out.stdout.splitlines()[1:]]


@needs_root
@needs_python
@pytest.mark.parametrize(("command", "status", "said"), [
    (["top", "{run}", "--json", "-1"], 1,
     "vmstats top: {run} cannot be listed (Permission denied): give the sockets of your "
     "VMs instead (vmstats list {run} shows them)"),
    (["exporter", "{run}", "--listen", "127.0.0.1:0"], 2,
     "vmstats exporter: {run}: cannot be listed: Permission denied"),
])  # fmt: skip
def test_a_run_directory_outside_its_group_is_said_to_be_unlistable(
    tmp_path: Path, nobody_env: dict[str, str], command: list[str], status: int, said: str
) -> None:
    """The run directory (0751) lets others reach the sockets they are given, not list
    them: a user outside the group who watches it is told so and where to look, not
    shown an empty host or waited on for ever."""
    parent = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmstats-unlisted-{os.getpid()}"
    parent.mkdir(mode=0o755)
    try:
        run = parent / "run"
        run.mkdir(mode=0o751)
        with socket.socket(socket.AF_UNIX) as served:
            served.bind(str(run / "web1.qmp"))
        out = subprocess.run(["/usr/bin/python3", "-m", "vmstats",
                              *[arg.format(run=run) for arg in command]],
                             capture_output=True, text=True, env=nobody_env, timeout=60,
                             preexec_fn=as_nobody)  # fmt: skip
        assert (out.returncode, out.stderr) == (status, said.format(run=run) + "\n")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@needs_root
@needs_python
def test_a_directory_others_cannot_enter_is_not_taken_for_a_run_directory(
    tmp_path: Path, nobody_env: dict[str, str]
) -> None:
    """``vmstats list`` of a directory uid 65534 may not enter says so; it said that no
    VM it may read was served, as if a daemon ran there."""
    parent = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmstats-closed-{os.getpid()}"
    parent.mkdir(mode=0o755)
    try:
        closed = parent / "closed"
        closed.mkdir(mode=0o700)
        out = subprocess.run(["/usr/bin/python3", "-m", "vmstats", "list", str(closed)],
                             capture_output=True, text=True, env=nobody_env, timeout=60,
                             preexec_fn=as_nobody)  # fmt: skip
        assert (out.returncode, out.stdout) == (1, "")
        assert out.stderr == (
            f"vmstats list: cannot look into {closed}: Permission denied "
            "(a vmstats serve run directory lets everyone through)\n"
        )
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.kvm
@requires_kvm
@needs_root
@needs_python
def test_allow_rules_give_groups_their_vms_and_sighup_changes_them(
    tmp_path: Path, nobody_env: dict[str, str]
) -> None:
    """``dba`` reads the ``db*`` VMs and ``ops`` root's, through the socket's ACL, the
    check at accept and its own list; after SIGHUP with other rules, ``dba`` reads
    nothing and ``web`` reads ``web1``, with no restart."""
    parent = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmstats-allow-{os.getpid()}"
    parent.mkdir(mode=0o755)
    run_dir = parent / "run"
    config = tmp_path / "serve.toml"
    config.write_text(f'allow = ["{DBA}:name=db*", "{OPS}:owner=root"]\n')
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--config", str(config),
                                 "--run-dir", str(run_dir), "--scan-interval", "0.3",
                                 "--group", str(GROUP)], stderr=stderr)  # fmt: skip
    db1, web1 = named_vmm("db1"), named_vmm("web1")
    try:
        assert wait_for(lambda: {"db1", "web1"} <= set(rows(run_dir)))
        db, web = run_dir / "db1.qmp", run_dir / "web1.qmp"
        assert acl.groups_of(db) == {DBA: 6, OPS: 6}
        assert acl.groups_of(web) == {OPS: 6}
        assert rows(run_dir)["db1"]["groups"] == [str(DBA), str(OPS)]  # names, or gids
        assert connect_as_nobody(db, [DBA]).stdout.startswith('{"QMP"')
        assert "Permission denied" in connect_as_nobody(web, [DBA]).stdout
        assert connect_as_nobody(web, [OPS]).stdout.startswith('{"QMP"')
        assert list_as_nobody(run_dir, [DBA], nobody_env) == ["db1"]
        assert list_as_nobody(run_dir, [DBA, OPS], nobody_env) == ["db1", "web1"]
        assert list_as_nobody(run_dir, [WEB], nobody_env) == []

        config.write_text(f'allow = ["{WEB}:name=web*"]\n')
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: acl.groups_of(web) == {WEB: 6} and not acl.groups_of(db))
        assert wait_for(lambda: "groups" not in rows(run_dir)["db1"])
        assert "Permission denied" in connect_as_nobody(db, [DBA]).stdout
        assert connect_as_nobody(web, [WEB]).stdout.startswith('{"QMP"')
        assert not (run_dir / f"vms-group-{DBA}.json").exists()
        assert list_as_nobody(run_dir, [WEB], nobody_env) == ["web1"]
        assert connect_as_nobody(db, [GROUP]).stdout.startswith('{"QMP"')  # the admin group
    finally:
        stop_process(db1)
        stop_process(web1)
        assert stop_process(proc) == 0
        shutil.rmtree(parent, ignore_errors=True)
    assert "Traceback" not in log.read_text()


@pytest.mark.kvm
@requires_kvm
@needs_root
@needs_python
def test_a_stranger_is_refused_at_accept_even_when_the_socket_lets_them_in(
    start_daemon: Callable[..., Daemon],
) -> None:
    """The check at accept stands behind the modes: with the socket opened to everyone
    (a mistake, a restored backup), a stranger still gets a refusal and no greeting,
    while the group is served and the daemon goes on."""
    parent = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmstats-accept-{os.getpid()}"
    parent.mkdir(mode=0o755)
    try:
        proc, _ = start_daemon("--group", str(GROUP), "--run-dir", str(parent / "run"))
        vm = named_vmm("db1")
        try:
            path = parent / "run" / "db1.qmp"
            assert wait_for(path.exists)
            os.chmod(path, 0o666)
            stranger = connect_as_nobody(path, [WEB])
            assert stranger.returncode == 0  # the kernel let it connect...
            reply = json.loads(stranger.stdout)  # ...and the daemon said no
            assert "not allowed to read this VM: uid 65534" in reply["error"]["desc"]
            assert connect_as_nobody(path, [GROUP]).stdout.startswith('{"QMP"')
            assert proc.poll() is None
        finally:
            stop_process(vm)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize(("args", "problem"), [
    (["--allow", "no-such-group-here:name=db*"], "no group named 'no-such-group-here'"),
    (["--allow", "4243:colour=red"], "is not one of"),
])  # fmt: skip
def test_a_wrong_allow_is_a_usage_error(args: list[str], problem: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                          str(tmp_path / "run"), "--once", *args], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert problem in out.stderr
    assert "Traceback" not in out.stderr
    config = tmp_path / "serve.toml"
    config.write_text(f"allow = [{json.dumps(args[1])}]\n")
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--config", str(config),
                          "--once"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert f"allow: {args[1]!r}" in out.stderr
    assert problem in out.stderr
