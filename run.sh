#!/usr/bin/env bash
# Installs vmstats into .venv (once, and again when pyproject.toml changes) and runs it;
# with no arguments it runs the main job: the demo VM with its live stats.
set -euo pipefail
cd "$(dirname "$0")"
stamp=.venv/.vmstats-installed
if [ ! -x .venv/bin/python ] || [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    touch "$stamp"
fi
if [ "$#" -eq 0 ]; then set -- demo; fi
exec .venv/bin/vmstats "$@"
