#!/usr/bin/env bash
# Installs everything the tests need, then runs the whole test suite.  Safe to run again.
#   - Debian packages (when root): qemu-system-x86 (QEMU 7.2), tmux, prometheus (a real
#     Prometheus and promtool: the exporter's tests start their own on a free port), and
#     libvirt 9.0 (libvirt-daemon-system, libvirt-clients; libvirt-dev and pkg-config to
#     build its Python binding): the serve tests start libvirtd themselves, no systemd;
#   - QEMU 10.0 from bookworm-backports, unpacked beside 7.2 (not installed over it);
#   - the package and its test dependencies into .venv.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/sbin/libvirtd ] || missing+=(libvirt-daemon-system)
command -v virsh >/dev/null 2>&1 || missing+=(libvirt-clients)
pkg-config --exists libvirt 2>/dev/null || missing+=(libvirt-dev pkg-config)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        echo "test.sh: ${missing[*]} missing and cannot be installed here;" \
             "the tests that need them will be skipped" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extras=test
if pkg-config --exists libvirt 2>/dev/null; then
    extras=test,libvirt  # libvirt-python builds against the headers
else
    echo "test.sh: libvirt's headers are missing; the libvirt tests will be skipped" >&2
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
touch .venv/.vmstats-installed
if [ "$(id -u)" = 0 ]; then
    .venv/bin/python -m vmstats.testing.qemu10 >/dev/null \
        || echo "test.sh: QEMU 10.0 could not be fetched; its tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
