"""The daemon's settings: defaults, then the file, then the command line; SIGHUP changes
only what a running daemon can change; a file's mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmstats.cli.main import build_parser
from vmstats.cli.serve_config import ServeConfig, given_settings, read_config
from vmstats.errors import UsageError


def settings(tmp_path: Path, text: str, *argv: str) -> tuple[ServeConfig, dict[str, object]]:
    path = tmp_path / "vmstats.toml"
    path.write_text(text)
    given = given_settings(build_parser().parse_args(["serve", *argv]))
    return ServeConfig.of(read_config(path), given), given


def test_the_command_line_wins_over_the_file_which_wins_over_the_defaults(tmp_path: Path) -> None:
    config, _ = settings(tmp_path, 'scan-interval = 2\nqmp = ["/run/a.sock"]\nidle-timeout = 9\n',
                         "--scan-interval", "5", "--write-timeout", "7")  # fmt: skip
    assert config.scan_interval == 5.0  # given, though equal to the default
    assert config.qmp == ("/run/a.sock",)
    assert config.limits.idle_timeout == 9.0
    assert config.limits.write_timeout == 7.0
    assert config.run_dir == ServeConfig().run_dir


def test_sighup_changes_what_a_running_daemon_can_and_keeps_the_rest(tmp_path: Path) -> None:
    config, given = settings(tmp_path, 'run-dir = "/run/a"\nscan-interval = 2\n',
                             "--idle-timeout", "3")  # fmt: skip
    fresh = read_config(_write(tmp_path, 'run-dir = "/run/b"\nqmp-timeout = 4\nidle-timeout = 8\n'))
    reloaded = config.reloaded(fresh, given)
    assert reloaded.run_dir == Path("/run/a")  # needs a restart
    assert reloaded.qmp_timeout == 4.0
    assert reloaded.scan_interval == ServeConfig().scan_interval  # left out: its default
    assert reloaded.idle_timeout == 3.0  # the command line still wins


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 'blue'", "unknown settings colour"),
    ("scan-interval = 'soon'", "scan-interval: not a number: 'soon'"),
    ("scan-interval = -1", "scan-interval: must be a finite number above 0"),
    ("scan-interval = true", "scan-interval: must be a number"),
    ("qmp = '/run/qemu.sock'", "qmp: must be a list of strings"),
    ("qmp-timeout = [1]", "qmp-timeout: must be a number"),
    ("run-dir = 5.5", ""),  # a path may look like a number
    ("run-dir = ''", "run-dir: an empty path: give the directory"),
    ("group = ['a']", "group: must be a string"),
    ("metrics = '127.0.0.1:99999'", "metrics: port must be between 0 and 65535"),
    ("max-connections = 0", "max-connections: must be between 1 and"),
    ("scan-interval = [", "cannot read"),
])  # fmt: skip
def test_a_bad_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text + "\n")
    if not message:
        assert read_config(path) == {"run_dir": Path.cwd() / "5.5"}  # made absolute
        return
    with pytest.raises(UsageError, match=message):
        read_config(path)


def test_a_group_that_does_not_exist_says_how_to_make_it() -> None:
    with pytest.raises(UsageError, match=r"no group named 'vmstats-nobody-has-this'.*groupadd"):
        ServeConfig(group="vmstats-nobody-has-this").group_id()
    assert ServeConfig(group="4242").group_id() == 4242


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fresh.toml"
    path.write_text(text)
    return path


def test_serve_with_a_group_that_does_not_exist_says_how_to_make_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--group", "vmstats-nx",
                          "--run-dir", str(tmp_path / "run"), "--once"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == ("vmstats serve: no group named 'vmstats-nx': create it (groupadd "
                          "--system vmstats-nx, or contrib/systemd's sysusers file) or give "
                          "another with --group\n")  # fmt: skip


@pytest.mark.parametrize(("option", "text", "message"), [
    ("--series", "vcpus = 'some'\n", "--series: {path}: vcpus must be one of each, vm, not 'some'"),
    ("--web-config", "tls_server_config = 5\n", "--web-config: {path}: "),
])  # fmt: skip
def test_once_checks_the_files_a_real_run_reads(tmp_path: Path, option: str, text: str,
                                                message: str) -> None:  # fmt: skip
    """``--once`` is a rehearsal: a file that would stop the real run stops it too."""
    import subprocess
    import sys

    path = _write(tmp_path, text)
    out = subprocess.run([sys.executable, "-m", "vmstats", "serve", "--once", "--metrics", "0",
                          option, str(path), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.startswith("vmstats serve: " + message.format(path=path)), out.stderr


def test_libvirt_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    config, _ = settings(tmp_path, 'libvirt = "qemu:///session"\nlibvirt-max-age = 0\n')
    assert (config.libvirt, config.libvirt_max_age) == ("qemu:///session", 0.0)
    config, _ = settings(tmp_path, 'libvirt = "qemu:///session"\n', "--libvirt")
    assert config.libvirt == "qemu:///system"  # the flag alone: libvirt's system URI
    assert ServeConfig().libvirt is None  # not watched unless asked


def test_libvirt_without_its_python_binding_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    # The binding made unimportable, as on a machine without vmstats[libvirt].
    code = (
        "import sys; sys.modules['libvirt'] = None; from vmstats.cli.main import main; "
        f"sys.exit(main(['serve', '--libvirt', '--once', '--run-dir', '{tmp_path}/run']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("vmstats serve: --libvirt: libvirt's Python binding is not "
                                 "installed (pip install 'vmstats[libvirt]'")  # fmt: skip
    assert out.stderr.count("\n") == 1
