"""The demo guest: a tiny real KVM VM driven from Python, with known stats.

Its vCPUs run a ring-0 loop of port I/O, MMIO writes and HLT, so that counters move at a
known pace; it keeps its VM and vCPU stats fds open for its whole life and serves them
through a :class:`vmstats.kvm.provider.KvmStatsProvider`.
"""

from vmstats.demo.guest import GuestProgram
from vmstats.demo.vm import DemoVM, qemu_vcpu_path

__all__ = ["DemoVM", "GuestProgram", "qemu_vcpu_path"]
