"""A real KVM VM with N vCPUs, each run by its own thread, and its stats fds kept open.

The vCPU threads release the GIL inside ``KVM_RUN`` (CPython's ``fcntl.ioctl`` with an
int argument does), so several vCPUs and the stats server share one process.  Exits are
handled here: port I/O and MMIO writes are counted and resumed, HLT ends a round and the
thread waits for the next one according to the rate.  Stopping sets an event that every
vCPU sees at its next HLT (a round is short), so shutdown is prompt and clean.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType

from vmstats.demo.guest import CODE_ADDRESS, MMIO_ADDRESS, GuestProgram
from vmstats.errors import GuestError
from vmstats.kvm import ioctl as kvm
from vmstats.kvm.binstats import StatsFile
from vmstats.kvm.provider import KvmStatsProvider, VcpuStatsFile
from vmstats.qmp.machine import pc_vcpu_path

log = logging.getLogger(__name__)

GUEST_MEMORY_SIZE = 0x10000
_TSS_ADDRESS = 0xFFFBD000 - (1 << 32)  # the ioctl takes a signed int
_REGS = struct.Struct("=18Q")  # rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rip rflags
_RIP, _RFLAGS = 16, 17
_SEGMENT = struct.Struct("=QIH8BBB")  # base limit selector type..avl unusable padding
_SREGS_SIZE = 312
_CS_OFFSET, _DS_OFFSET = 0, 24


#: QEMU's pc machine's QOM path of a CPU: what the demo reports its vCPUs under.
qemu_vcpu_path = pc_vcpu_path


@dataclass
class VcpuCounters:
    """What userspace saw of one vCPU: the ground truth the tests compare KVM's stats to."""

    runs: int = 0
    io_exits: int = 0
    mmio_exits: int = 0
    halts: int = 0
    error: str | None = None


@dataclass
class _Vcpu:
    index: int
    fd: int
    run: mmap.mmap
    counters: VcpuCounters = field(default_factory=VcpuCounters)

    def run_rounds(self, rounds: int | None, interval: float, stop: threading.Event) -> None:
        """Run until ``rounds`` HLTs (None: until ``stop``), waiting ``interval`` after each."""
        counters = self.counters
        run = self.run
        fd = self.fd
        while not stop.is_set():
            fcntl.ioctl(fd, kvm.KVM_RUN, 0)
            counters.runs += 1
            reason = struct.unpack_from("=I", run, kvm.KVM_RUN_EXIT_REASON)[0]
            if reason == kvm.KVM_EXIT_IO:
                counters.io_exits += 1
            elif reason == kvm.KVM_EXIT_MMIO:
                counters.mmio_exits += 1
            elif reason == kvm.KVM_EXIT_HLT:
                counters.halts += 1
                if rounds is not None and counters.halts >= rounds:
                    return
                if interval > 0:
                    stop.wait(interval)
            else:
                raise GuestError(f"vCPU {self.index}: unexpected exit reason {reason}")

    def thread_main(self, rounds: int | None, interval: float, stop: threading.Event) -> None:
        """A vCPU's thread, once named (:func:`_name_this_thread`): runs until ``stop``,
        an error is kept in :attr:`counters` and logged."""
        try:
            self.run_rounds(rounds, interval, stop)
        except Exception as exc:  # noqa: BLE001 -- reported, never lost: the VM shows it and stops
            self.counters.error = str(exc)
            log.error("vCPU %d stopped: %s", self.index, exc)


def _address_of(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _name_this_thread(name: str) -> None:
    """The kernel's name of the calling thread (``/proc/PID/task/TID/comm``)."""
    with open("/proc/thread-self/comm", "w") as comm:
        comm.write(name)


class DemoVM:
    """The demo guest.  Use as a context manager; :attr:`provider` serves its stats.

    ``qemu_layout``: lay the VM out as QEMU >= 8.1 does, for whoever looks at the process
    (the host daemon, load tests): each vCPU made, and its stats fd opened, by a thread of
    its own named ``CPU N/KVM`` that lives as long as the VM; the VM's own stats fd not kept
    (QEMU opens it per query).  The demo's own layout makes every vCPU on one thread.
    """

    def __init__(
        self,
        vcpus: int = 2,
        program: GuestProgram | None = None,
        rate: float = 50.0,
        qemu_layout: bool = False,
    ) -> None:
        if vcpus < 1:
            raise ValueError("a VM needs at least one vCPU")
        self.program = program or GuestProgram()
        self.rate = rate
        self.qemu_layout = qemu_layout
        self._go = threading.Event()  # qemu_layout: the vCPU threads may run
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._vcpus: list[_Vcpu] = []
        self._kvm_fd = self._vm_fd = -1
        self._memory: mmap.mmap | None = None
        self.provider: KvmStatsProvider
        self.stats_files: list[StatsFile] = []  # the VM's, then each vCPU's: what is sent
        self._create(vcpus)

    # -- construction ---------------------------------------------------------------

    def _create(self, count: int) -> None:
        reason = kvm.kvm_unavailable_reason()
        if reason is not None:
            raise kvm.KvmUnavailable(reason)
        try:
            self._kvm_fd = os.open(kvm.KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
            self._vm_fd = fcntl.ioctl(self._kvm_fd, kvm.KVM_CREATE_VM, 0)
            # Intel needs a TSS area for real mode; PVM and AMD refuse or ignore it.
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._vm_fd, kvm.KVM_SET_TSS_ADDR, _TSS_ADDRESS)
            self._map_memory()
            mmap_size = fcntl.ioctl(self._kvm_fd, kvm.KVM_GET_VCPU_MMAP_SIZE, 0)
            vm_stats = StatsFile(kvm.get_stats_fd(self._vm_fd), owned=True)
            if self.qemu_layout:
                vcpu_files = self._create_vcpu_threads(count, mmap_size)
            else:
                vcpu_files = []
                for index in range(count):
                    vcpu = self._create_vcpu(index, mmap_size)
                    self._vcpus.append(vcpu)
                    vcpu_files.append(StatsFile(kvm.get_stats_fd(vcpu.fd), owned=True))
            self.stats_files = [vm_stats, *vcpu_files]
            vcpu_stats = [VcpuStatsFile(qemu_vcpu_path(i), file)
                          for i, file in enumerate(vcpu_files)]  # fmt: skip
            self.provider = KvmStatsProvider(vm_stats, vcpu_stats)
            if self.qemu_layout:  # what the process shows: the vCPUs' stats fds only
                self.stats_files = vcpu_files
                vm_stats.close()
                self.provider.vm = None
        except BaseException:
            self._close_control_fds()
            raise

    def _map_memory(self) -> None:
        memory = mmap.mmap(-1, GUEST_MEMORY_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        code = self.program.assemble()
        memory[CODE_ADDRESS : CODE_ADDRESS + len(code)] = code
        region = struct.pack("=IIQQQ", 0, 0, 0, GUEST_MEMORY_SIZE, _address_of(memory))
        fcntl.ioctl(self._vm_fd, kvm.KVM_SET_USER_MEMORY_REGION, region)
        self._memory = memory

    def _create_vcpu_threads(self, count: int, mmap_size: int) -> list[StatsFile]:
        """QEMU's layout: vCPU N made, with its stats fd, by its thread ``CPU N/KVM``, which
        then waits to run it (:meth:`start`) or to stop."""
        made: dict[int, tuple[_Vcpu, StatsFile] | BaseException] = {}
        ready = threading.Barrier(count + 1)
        interval = 1.0 / self.rate if self.rate > 0 else 0.0

        def vcpu_thread(index: int) -> None:
            try:
                _name_this_thread(f"CPU {index}/KVM")
                vcpu = self._create_vcpu(index, mmap_size)
                made[index] = (vcpu, StatsFile(kvm.get_stats_fd(vcpu.fd), owned=True))
            except BaseException as exc:  # noqa: BLE001 -- raised by the creating thread
                made[index] = exc
            ready.wait()
            if isinstance(made[index], BaseException):
                return
            while not self._go.wait(1.0):
                if self._stop.is_set():
                    return
            vcpu.thread_main(None, interval, self._stop)

        for index in range(count):
            thread = threading.Thread(target=vcpu_thread, args=(index,), daemon=True,
                                      name=f"CPU {index}/KVM")  # fmt: skip
            thread.start()
            self._threads.append(thread)
        ready.wait()
        for index in range(count):
            if isinstance(result := made[index], BaseException):
                raise result
        self._vcpus = [made[i][0] for i in range(count)]  # type: ignore[index]
        return [made[i][1] for i in range(count)]  # type: ignore[index]

    def _create_vcpu(self, index: int, mmap_size: int) -> _Vcpu:
        fd = fcntl.ioctl(self._vm_fd, kvm.KVM_CREATE_VCPU, index)
        os.set_inheritable(fd, False)
        sregs = bytearray(fcntl.ioctl(fd, kvm.KVM_GET_SREGS, bytes(_SREGS_SIZE)))
        for offset, base in ((_CS_OFFSET, 0), (_DS_OFFSET, MMIO_ADDRESS)):
            fields = list(_SEGMENT.unpack_from(sregs, offset))
            fields[0], fields[2] = base, base >> 4  # base, selector (real mode)
            _SEGMENT.pack_into(sregs, offset, *fields)
        fcntl.ioctl(fd, kvm.KVM_SET_SREGS, bytes(sregs))
        regs = [0] * 18
        regs[_RIP], regs[_RFLAGS] = CODE_ADDRESS, 0x2
        fcntl.ioctl(fd, kvm.KVM_SET_REGS, _REGS.pack(*regs))
        run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return _Vcpu(index, fd, run)

    # -- running --------------------------------------------------------------------

    @property
    def vcpu_count(self) -> int:
        return len(self._vcpus)

    @property
    def counters(self) -> list[VcpuCounters]:
        return [v.counters for v in self._vcpus]

    @property
    def thread_ids(self) -> list[int]:
        """The threads running the vCPUs, in vCPU order (once started)."""
        return [t.native_id or 0 for t in self._threads]

    def run_rounds(self, rounds: int) -> None:
        """Run every vCPU for exactly ``rounds`` rounds, one after the other, in this thread.

        Deterministic: what the tests use to know the exact counts.
        """
        if self._threads and not self.qemu_layout:
            raise RuntimeError("the vCPU threads are running")
        for vcpu in self._vcpus:
            target = vcpu.counters.halts + rounds
            vcpu.run_rounds(target, 0, threading.Event())

    def start(self) -> None:
        """Start one thread per vCPU, running rounds at :attr:`rate` per second (0: flat out).

        Returns once each thread is named as QEMU names it (``CPU N/KVM``, by which the
        daemon's exit-reason counters find vCPU threads): naming opens an fd for a moment,
        and a scan that saw it would see the fd table change again right after."""
        if self.qemu_layout:
            self._go.set()
            return
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        named = threading.Barrier(len(self._vcpus) + 1)

        def vcpu_thread(vcpu: _Vcpu) -> None:
            try:
                _name_this_thread(f"CPU {vcpu.index}/KVM")
            except OSError as exc:  # runs unnamed: its exits are not told from the others'
                log.warning("vCPU %d: cannot name its thread: %s", vcpu.index, exc)
            finally:
                named.wait()  # whatever happened: start() must not wait for ever
            vcpu.thread_main(None, interval, self._stop)

        for vcpu in self._vcpus:
            thread = threading.Thread(target=vcpu_thread, args=(vcpu,),
                                      name=f"CPU {vcpu.index}/KVM", daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        named.wait()  # named (and the fd that names them closed) before anyone looks

    @property
    def errors(self) -> list[str]:
        return [f"vCPU {v.index}: {v.counters.error}" for v in self._vcpus if v.counters.error]

    def stop(self) -> None:
        """Stop the vCPUs (each at its next exit) and wait for their threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _close_control_fds(self) -> None:
        for vcpu in self._vcpus:
            vcpu.run.close()
            os.close(vcpu.fd)
        self._vcpus = []
        for fd in (self._vm_fd, self._kvm_fd):
            if fd >= 0:
                os.close(fd)
        self._vm_fd = self._kvm_fd = -1
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def close(self) -> None:
        """Stop, then close every fd: control fds and the stats fds."""
        self.stop()
        if self._threads:
            raise RuntimeError("vCPU threads did not stop")
        self._close_control_fds()
        if hasattr(self, "provider"):
            self.provider.close()

    def __enter__(self) -> DemoVM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
