"""KVM ioctl numbers and structure offsets (``linux/kvm.h``, x86-64), in one place.

Only what vmstats uses: creating a small VM for the demo guest, and ``KVM_GET_STATS_FD``.
"""

from __future__ import annotations

import fcntl
import os

from vmstats.errors import KvmUnavailable

__all__ = ["KvmUnavailable", "get_stats_fd", "kvm_unavailable_reason"]

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _ioc(_IOC_NONE, 0x00, 0)
KVM_CREATE_VM = _ioc(_IOC_NONE, 0x01, 0)
KVM_CHECK_EXTENSION = _ioc(_IOC_NONE, 0x03, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(_IOC_NONE, 0x04, 0)
KVM_CREATE_VCPU = _ioc(_IOC_NONE, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, 32)
KVM_SET_TSS_ADDR = _ioc(_IOC_NONE, 0x47, 0)
KVM_RUN = _ioc(_IOC_NONE, 0x80, 0)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, 144)
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, 144)
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, 312)
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, 312)
KVM_GET_STATS_FD = _ioc(_IOC_NONE, 0xCE, 0)

KVM_API_VERSION = 12
KVM_CAP_BINARY_STATS_FD = 203

# struct kvm_run: exit reasons and where their data lives.
KVM_RUN_EXIT_REASON = 8
KVM_RUN_EXIT_DATA = 32
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17

#: The KVM device; ``VMSTATS_KVM_DEVICE`` overrides it (tests use it to play "no KVM").
KVM_DEVICE = os.environ.get("VMSTATS_KVM_DEVICE", "/dev/kvm")


def kvm_unavailable_reason(device: str | None = None) -> str | None:
    """Why KVM binary stats cannot be used here, or None when they can.

    Opens the device and asks for the API version and the binary stats capability: a
    present but unusable ``/dev/kvm`` (no permission, no module) is reported as such.
    """
    device = device or KVM_DEVICE
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return (
            f"{device} does not exist (is the kvm module loaded? "
            "inside a VM, is nested virtualisation enabled?)"
        )
    except PermissionError:
        return f"no permission to open {device} (run as root or join the 'kvm' group)"
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            return f"{device} speaks KVM API {version}, not {KVM_API_VERSION}"
        if fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) <= 0:
            return "this kernel has no KVM binary stats (KVM_CAP_BINARY_STATS_FD, Linux >= 5.14)"
    except OSError as exc:
        return f"{device} does not answer KVM ioctls: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def get_stats_fd(fd: int) -> int:
    """``KVM_GET_STATS_FD`` on a VM or vCPU fd: a new read-only, close-on-exec stats fd."""
    stats_fd = fcntl.ioctl(fd, KVM_GET_STATS_FD, 0)
    os.set_inheritable(stats_fd, False)
    return stats_fd
