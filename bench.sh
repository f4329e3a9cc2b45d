#!/usr/bin/env bash
# Runs the benchmarks (vmstats vs QEMU 7.2 with KVM) and prints a markdown table.
# Arguments go to benchmarks/bench.py (--help); a full run takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/python benchmarks/bench.py "$@"
