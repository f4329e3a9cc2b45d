"""This kernel's stats layouts, read from a throwaway VM of our own.

The descriptors (names, types, units, exponents, buckets) are the kernel's, the same for
every VM on the host.  Where values come from elsewhere (libvirt's copy of QEMU's
``query-stats``, which drops units and histograms), the schema still has to be exact, so
the daemon creates a VM with one vCPU (``KVM_CREATE_VM``, ``KVM_CREATE_VCPU``), asks each
for its stats fd, reads the layouts and closes everything at once: no control fd is kept,
and the VM never runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass

from vmstats.errors import KvmUnavailable
from vmstats.kvm import ioctl as kvm
from vmstats.kvm.binstats import StatsFile, StatsLayout


@dataclass(frozen=True)
class KernelLayouts:
    """The layouts of this kernel's VM and vCPU stats files."""

    vm: StatsLayout
    vcpu: StatsLayout


def kernel_layouts() -> KernelLayouts:
    """Read the layouts from a VM created and destroyed here; :class:`KvmUnavailable`
    when this process cannot create one."""
    reason = kvm.kvm_unavailable_reason()
    if reason is not None:
        raise KvmUnavailable(reason)
    fds: list[int] = []
    try:
        fds.append(os.open(kvm.KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC))
        fds.append(fcntl.ioctl(fds[0], kvm.KVM_CREATE_VM, 0))
        fds.append(fcntl.ioctl(fds[1], kvm.KVM_CREATE_VCPU, 0))
        vm = StatsFile(kvm.get_stats_fd(fds[1]), owned=True)
        fds.append(vm.fd)
        vcpu = StatsFile(kvm.get_stats_fd(fds[2]), owned=True)
        fds.append(vcpu.fd)
        return KernelLayouts(vm.layout, vcpu.layout)
    except OSError as exc:
        raise KvmUnavailable(f"cannot create a VM to read this kernel's stats layouts: "
                             f"{exc.strerror or exc}") from exc  # fmt: skip
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                os.close(fd)
