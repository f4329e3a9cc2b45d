"""The daemon as the serve tests start it: ``vmstats serve`` in a process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmstats
from tests.serve.users import imported_by_serve
from vmstats.testing.qemu import stop_process
from vmstats.trace.bpf import map_by_id, map_keys

Daemon = tuple[subprocess.Popen[str], Path]


def log_path(run_dir: Path) -> Path:
    """Where the log of the daemon :func:`start_daemon` started on ``run_dir`` goes."""
    return run_dir.with_name(f"{run_dir.name}.log")


def rows(run_dir: Path) -> dict[str, dict[str, object]]:
    """``vms.json``'s rows by name; none until it is written.  It is written at the end
    of the scan that made the sockets (clients are answered meanwhile): a test that saw
    a socket appear waits for its row."""
    try:
        return {str(r["name"]): r for r in json.loads((run_dir / "vms.json").read_text())}
    except (OSError, ValueError):
        return {}


def log_of(run_dir: Path) -> str:
    """That daemon's log so far (all of it once it stopped)."""
    return log_path(run_dir).read_text(errors="replace")


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts ``vmstats serve`` with extra arguments; stops it at the end of the test.
    Its log goes to a file (a pipe nobody reads would stop it once full), whose end is
    printed when it stops: pytest shows it with a failed test."""
    started: list[Daemon] = []

    def start(*extra: str, open_files: tuple[int, int] | None = None) -> Daemon:
        """``open_files``: its soft and hard RLIMIT_NOFILE from the start."""

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        run_dir = tmp_path / f"run{len(started)}"
        with log_path(run_dir).open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "vmstats", "serve", "--run-dir",
                                     str(run_dir), "--scan-interval", "0.3", *extra],
                                    stderr=log, text=True, preexec_fn=limit)  # fmt: skip
        started.append((proc, run_dir))
        return proc, run_dir

    yield start
    for proc, run_dir in started:
        code = stop_process(proc)
        lines = log_of(run_dir).splitlines()
        print(f"--- vmstats serve of {run_dir}: the last of its log ---", *lines[-40:], sep="\n")
        assert code == 0  # SIGTERM: a clean exit...
        assert not list(run_dir.glob("*.qmp"))  # ...that removes the sockets


@pytest.fixture(scope="session")
def nobody_env() -> Iterator[dict[str, str]]:
    """How uid 65534 runs this vmstats: the system's Python with a world-readable copy of
    our sources and of the packages ``vmstats serve`` imports.  Copied, because the clone
    (and the venv's interpreter) may be where that user cannot look: under ``/root``, or
    in a private temporary directory."""
    import importlib

    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system python3 for uid 65534")
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    if version != str(sys.version_info[:2]):
        pytest.skip(f"the system python3 is {version}, not this Python: it cannot load msgspec")
    lib = Path(tempfile.mkdtemp(prefix="vmstats-nobody-lib-"))
    try:
        shutil.copytree(Path(vmstats.__file__).parent, lib / "vmstats")
        for name in imported_by_serve():
            found = Path(importlib.import_module(name).__file__ or "")
            if found.name == "__init__.py":
                shutil.copytree(found.parent, lib / found.parent.name)
            else:
                shutil.copy(found, lib / found.name)
        for path in [lib, *lib.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        yield {**os.environ, "PYTHONPATH": str(lib)}
    finally:
        shutil.rmtree(lib, ignore_errors=True)


def counted_threads(pid: int) -> list[int]:
    """The threads a process's tracer counts: the keys of its map of threads (a BPF hash
    map; root opens it by its id)."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{name}").read_text()
            found = re.search(r"map_id:\s*(\d+)", info)
            if found is not None and re.search(r"map_type:\s*1\n", info):
                fd = map_by_id(int(found[1]))
                try:
                    return map_keys(fd)
                finally:
                    os.close(fd)
    return []
