"""Reading a TOML settings file (``serve --config``, ``--series``): one way to say what is
wrong with one, naming the file and the keys."""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from vmstats.errors import UsageError, os_reason


def read_toml(path: Path, known: Collection[str]) -> dict[str, Any]:
    """The file's settings; :class:`UsageError` if it cannot be read or parsed, or has a
    key not in ``known`` (named, with the known ones)."""
    try:
        with path.open("rb") as file:
            config = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {os_reason(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise UsageError(f"{path}: unknown settings {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")  # fmt: skip
    return config
