#!/usr/bin/env bash
# Runs the benchmarks (vmstats vs QEMU 7.2 and QEMU 10.0, with KVM, and the floor) and
# prints markdown tables.
# Arguments go to benchmarks/bench.py (--help); a full run takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
if [ "$(id -u)" = 0 ]; then  # QEMU 10.0 beside 7.2 (unpacked, not installed)
    .venv/bin/python -m vmstats.testing.qemu10 >/dev/null || echo "bench.sh: no QEMU 10.0" >&2
fi
exec .venv/bin/python benchmarks/bench.py "$@"
