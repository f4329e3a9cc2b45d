"""A real Prometheus (Debian's ``prometheus`` package) for tests: started on loopback with
a generated config and a short scrape interval, asked with PromQL over its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from vmstats.testing.qemu import stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def prometheus_unavailable_reason() -> str | None:
    for binary in (PROMETHEUS, PROMTOOL):
        if not Path(binary).exists():
            return f"{binary} is missing (apt-get install prometheus)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """Prometheus scraping ``targets`` (``host:port``) every ``interval`` seconds; or, with
    ``jobs``, those scrape configs (dicts as in prometheus.yml: TLS, basic auth...)."""

    def __init__(self, targets: list[str], interval: float = 1.0,
                 jobs: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        self._tmp = tempfile.TemporaryDirectory(prefix="vmstats-prometheus-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = Path(self._tmp.name) / "prometheus.yml"
        if jobs is None:
            jobs = [{"job_name": "vmstats", "static_configs": [{"targets": targets}]}]
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": f"{interval:g}s", "scrape_timeout": f"{interval:g}s"},
            "scrape_configs": jobs}))  # fmt: skip
        self.args = [PROMETHEUS, f"--config.file={config}",
                     f"--storage.tsdb.path={self._tmp.name}/data",
                     f"--web.listen-address=127.0.0.1:{self.port}"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(self._tmp.name) / "log"

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited: {self.log.read_text()}") from None
            time.sleep(0.2)
        raise TimeoutError("prometheus was not ready in 60 s")

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
        self._tmp.cleanup()

    def targets(self) -> dict[str, dict[str, Any]]:
        """The active targets by job: their health and last error."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as reply:
            body = json.load(reply)
        return {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query's result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)
