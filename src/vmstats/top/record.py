"""Recordings: timestamped samples in an append-only JSON Lines file (gzip if ``.gz``).

The format (one JSON object per line, documented in docs/top.md)::

    {"format": "vmstats-recording", "version": 1, "started": T, "interval": S}
    {"vm": NAME, "schemas": [StatsSchema, ...], "cpus": [QOM path by CPU index]}
    {"vm": NAME, "t": T, "values": [[provider, target, qom-path, {stat: value}], ...]}
    {"vm": NAME, "t": T, "gone": REASON}
    {"tick": T}

Schemas (QMP's own shape) come once per VM before its first sample, and again only if
they change.  A ``tick`` closes each refresh.  Every line is flushed as it is written
(a gzip stream with a sync flush), so a file cut by a crash or a kill mid-write reads
back up to its last whole line: :func:`read_recording` stops there, quietly.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vmstats.errors import RecordingError, os_reason
from vmstats.qapi.output import OutputEncoder
from vmstats.reader.sample import Sample
from vmstats.stats.decode import schemas_from_wire
from vmstats.stats.model import StatsSchema
from vmstats.stats.schema import stats_schema
from vmstats.top.watch import Watch

FORMAT = "vmstats-recording"
VERSION = 1
_ENCODER = OutputEncoder(stats_schema((8, 0)))


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


class Recorder:
    """Appends what a :class:`Watch` reads, refresh by refresh."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        try:
            self._file = _open(path, "a")
        except OSError as exc:
            raise _unwritable(path, exc) from None
        self._schemas: dict[str, Any] = {}
        self._write({"format": FORMAT, "version": VERSION, "started": time.time(),
                     "interval": interval})  # fmt: skip

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def record(self, watch: Watch) -> None:
        """Write the latest sample (or absence) of every VM, then a tick; flush.  What
        was flushed before a failed write (a full disk) stays a recording."""
        try:
            self._record(watch)
        except OSError as exc:
            raise _unwritable(self.path, exc) from None

    def _record(self, watch: Watch) -> None:
        for name, state in watch.vms.items():
            if state.gone is not None:
                self._write({"vm": name, "t": watch.taken, "gone": state.gone})
                continue
            if state.current is None:
                continue
            schemas = _ENCODER.encode("[StatsSchema]", state.schema_list)
            if self._schemas.get(name) != (schemas, state.cpus):
                self._schemas[name] = (schemas, state.cpus)
                self._write({"vm": name, "schemas": schemas, "cpus": state.cpus})
            values = [[*key, dict(stats)] for key, stats in state.current.values.items()]
            self._write({"vm": name, "t": state.current.taken, "values": values})
        self._write({"tick": watch.taken})
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()  # its last flush
        except OSError as exc:
            raise _unwritable(self.path, exc) from None


def _unwritable(path: Path, exc: OSError) -> RecordingError:
    return RecordingError(f"cannot write {path}: {os_reason(exc)}")


@dataclass
class Refresh:
    """One refresh read back: what each VM said, and when the refresh ended."""

    tick: float
    schemas: dict[str, tuple[list[StatsSchema], list[str]]] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)

    def apply(self, watch: Watch) -> None:
        for name, (schemas, cpus) in self.schemas.items():
            watch.apply(name, schemas=schemas, cpus=cpus)
        for name, sample in self.samples.items():
            watch.apply(name, sample=sample)
        for name, reason in self.gone.items():
            watch.apply(name, gone=reason)
        watch.taken = self.tick


def _lines(path: Path) -> Iterator[str]:
    """Whole lines only: a gzip stream or a last line cut short ends the file there."""
    try:
        with _open(path, "r") as file:
            for line in file:
                if not line.endswith("\n"):
                    return
                yield line
    except (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError):
        return
    except OSError as exc:  # unreadable (another user's), or a failing disk
        raise RecordingError(f"cannot read {path}: {os_reason(exc)}") from None


def read_recording(path: Path) -> Iterator[Refresh]:
    """The refreshes of a recording, in order; :class:`RecordingError` if it is none."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        raise RecordingError(f"no recording at {path}") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {os_reason(exc)}") from None
    if not regular:
        raise RecordingError(f"{path} is not a file: a recording is one")
    lines = _lines(path)
    try:
        header = json.loads(next(lines))
    except (StopIteration, ValueError):
        raise RecordingError(
            f"{path} is not a vmstats recording (empty, or cut in its first line)"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path} is not a vmstats recording")
    if header.get("version") != VERSION:
        raise RecordingError(f"{path} is a recording of version {header.get('version')}; "
                             f"this vmstats reads version {VERSION}")  # fmt: skip
    current = Refresh(0.0)
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            continue
        if "tick" in record:
            current.tick = float(record["tick"])
            yield current
            current = Refresh(0.0)
        elif "schemas" in record:
            current.schemas[record["vm"]] = (schemas_from_wire(record["schemas"]),
                                             list(record.get("cpus", [])))  # fmt: skip
        elif "gone" in record:
            current.gone[record["vm"]] = str(record["gone"])
        elif "values" in record:
            values = {(p, t, q): stats for p, t, q, stats in record["values"]}
            current.samples[record["vm"]] = Sample(float(record["t"]), values)
    if current.samples or current.gone:  # a refresh cut before its tick
        current.tick = max((s.taken for s in current.samples.values()), default=0.0)
        yield current
