#!/usr/bin/env bash
# Installs vmstats into .venv (once) and runs it; with no arguments it runs the main job.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
if [ "$#" -eq 0 ]; then set -- demo; fi
exec .venv/bin/vmstats "$@"
