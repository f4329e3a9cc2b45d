#!/usr/bin/env bash
# Installs everything the tests need (QEMU from Debian, the package and its test
# dependencies into .venv), then runs the whole test suite.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing qemu-system-x86 (QEMU 7.2, for the comparison tests)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
    else
        echo "test.sh: qemu-system-x86_64 is missing and cannot be installed here;" \
             "the tests that compare with real QEMU will be skipped" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
