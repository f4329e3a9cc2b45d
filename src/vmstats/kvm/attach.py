"""Finding and taking the KVM stats fds that other processes keep (the host daemon's job).

A VMM that keeps its stats fds open (QEMU >= 8.1 keeps every vCPU's; our demo VM keeps
its VM's and vCPUs') lists them in ``/proc/PID/fd`` as ``anon_inode:kvm-vm-stats`` and
``anon_inode:kvm-vcpu-stats:N``.  ``pidfd_getfd`` copies one into this process; reading
the copy with ``pread`` costs the VMM nothing and kicks no vCPU (kvm-host-notes §4).
Only stats fds are ever copied: a VM or vCPU *control* fd is useless from another
process (KVM answers EIO) and must not be held.  Copying needs ptrace access to the VMM
(root with CAP_SYS_PTRACE, or the same user and a dumpable VMM).

Which vCPU a stats fd belongs to: its id string names the thread that created it
(``kvm-<tid>/vcpu-<vcpu_id>``), and QEMU names each vCPU thread ``CPU <index>/KVM``, so the
fd maps to QEMU's CPU index.  Without such a thread name (our demo VM creates its vCPUs on
one thread) the KVM vcpu_id serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from vmstats.errors import AttachError, BinaryStatsError
from vmstats.kvm.binstats import StatsFile, StatsSource

SYS_PIDFD_GETFD = 438  # x86-64
SYS_KCMP = 312
KCMP_FILE = 0
_KVM_LINK = "anon_inode:kvm-"
_VM_LINK = "anon_inode:kvm-vm-stats"
_VM_CONTROL = "anon_inode:kvm-vm"
_VCPU_LINK = re.compile(r"anon_inode:kvm-vcpu-stats:(\d+)$")
_VM_ID = re.compile(r"^kvm-\d+$")
_VCPU_ID = re.compile(r"^kvm-(\d+)/vcpu-(\d+)$")
_CREATOR = re.compile(r"^kvm-(\d+)")
_CPU_THREAD = re.compile(r"^CPU (\d+)/KVM$")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class StatsFdLink:
    """A stats fd in another process's table."""

    fd: int
    vcpu_id: int | None  # None: the VM's own stats

    @property
    def target(self) -> str:
        """What ``/proc/PID/fd/FD`` says of it."""
        return _VM_LINK if self.vcpu_id is None else f"anon_inode:kvm-vcpu-stats:{self.vcpu_id}"


def read_proc(path: str) -> bytes:
    """A small /proc file whole (no pathlib, no text layer: the daemon reads thousands
    of them in a scan); OSError if it cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FdListing:
    """A process's KVM fds as a scan read them: its stats fds, its VM control fds (a VMM
    holds one per VM; a process holding copies of stats fds holds none), and, when the
    scan read them all in one pass (:mod:`vmstats.kvm.iterate`), the names of its threads
    named as vCPUs (``CPU N/KVM``) and its effective uid."""

    links: list[StatsFdLink]
    control: list[int]
    vcpu_threads: Mapping[int, str] | None = None  # tid -> name; None: not read
    uid: int | None = None  # None: not read


def kvm_fds(targets: Iterable[tuple[int, str]], vcpu_threads: Mapping[int, str] | None = None,
            uid: int | None = None) -> FdListing:  # fmt: skip
    """The listing of a process whose fds are ``targets`` (fd, what ``readlink`` says of
    it): only its KVM ones count."""
    out = []
    control = []
    for fd, target in targets:
        if not target.startswith(_KVM_LINK):
            continue  # most fds: a scan of a big host reads thousands
        if target == _VM_LINK:
            out.append(StatsFdLink(fd, None))
        elif (match := _VCPU_LINK.match(target)) is not None:
            out.append(StatsFdLink(fd, int(match.group(1))))
        elif target == _VM_CONTROL:
            control.append(fd)
    out.sort(key=lambda link: (link.vcpu_id is not None, link.vcpu_id or 0, link.fd))
    return FdListing(out, control, vcpu_threads, uid)


def stats_fd_links(pid: int) -> list[StatsFdLink]:
    """The KVM stats fds process ``pid`` holds (:class:`AttachError` without access)."""
    return fd_links(pid).links


def fd_links(pid: int) -> FdListing:
    """The stats fds of ``pid`` and its VM control fds, read from ``/proc/PID/fd``."""

    def unlisted(exc: OSError) -> AttachError:  # no such process (any more)
        return AttachError(f"cannot list the fds of process {pid}: {exc.strerror}")

    try:  # links read relative to the open folder: no walk of /proc/PID/fd per link
        folder = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise unlisted(exc) from exc
    targets = []
    try:
        try:
            names = os.listdir(folder)
        except OSError as exc:  # it ended since the open
            raise unlisted(exc) from exc
        for name in names:
            try:
                targets.append((int(name), os.readlink(name, dir_fd=folder)))
            except FileNotFoundError:
                continue  # closed meanwhile
            except OSError as exc:
                raise AttachError(
                    f"cannot read the fds of process {pid}: {exc.strerror} "
                    "(reading another process's fds needs CAP_SYS_PTRACE)"
                ) from exc
    finally:
        os.close(folder)
    return kvm_fds(targets)


def same_file(pid: int, fd1: int, fd2: int) -> bool:
    """Are two fds of ``pid`` the same open file (a dup)?  ``kcmp(KCMP_FILE)``."""
    return int(_libc.syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2)) == 0


def still_held(pid: int, held: Iterable[tuple[int, int]]) -> bool:
    """Does ``pid`` still hold, at each ``fd``, the open file its ``copy`` was copied
    from (``held``: pairs of fd and copy)?  A VMM may close a stats fd and open another at
    the same number (a VM recreated on reset): ``kcmp(KCMP_FILE)`` tells the two apart
    where names, ids and inodes cannot."""
    me, kcmp = os.getpid(), _libc.syscall
    return all(int(kcmp(SYS_KCMP, pid, me, KCMP_FILE, fd, copy)) == 0 for fd, copy in held)


def vm_count(pid: int, control: list[int]) -> int:
    """How many VMs the control fds ``control`` of ``pid`` are (dups counted once)."""
    distinct: list[int] = []
    for fd in control:
        if not any(same_file(pid, fd, other) for other in distinct):
            distinct.append(fd)
    return len(distinct)


def stats_fds_by_process(vmms_only: bool = False) -> dict[int, list[StatsFdLink]]:
    """The stats fds of every process (that we may look into) holding some, by pid; not
    this one, which holds copies.  ``vmms_only``: only those that also hold a VM control
    fd, which a process holding copies (a reader, our demo's parent) does not: no copy is
    needed to tell them apart."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            listing = fd_links(int(entry))
        except AttachError:
            continue  # gone, or not ours to look into
        if listing.links and (listing.control or not vmms_only):
            found[int(entry)] = listing.links
    return dict(sorted(found.items()))


def processes_with_stats_fds(vmms_only: bool = False) -> list[int]:
    """Pids of the processes holding KVM stats fds (:func:`stats_fds_by_process`)."""
    return list(stats_fds_by_process(vmms_only))


#: Yama's ptrace policy, where the kernel has Yama (absent: none).
YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


def copy_fd(pidfd: int, fd: int) -> int:
    """``pidfd_getfd``: a copy of another process's fd in this process (close-on-exec)."""
    copied = int(_libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
    if copied < 0:
        code = ctypes.get_errno()
        raise AttachError(f"cannot copy fd {fd}: {os.strerror(code)}"
                          + (f" ({denied_why()})" if code == errno.EPERM else "")
                          ) from OSError(code, os.strerror(code))  # fmt: skip
    return copied


def denied_why(scope_path: str = YAMA_PTRACE_SCOPE) -> str:
    """Why copying another process's fd may be denied here: it needs ptrace access, which
    Yama (``kernel.yama.ptrace_scope``) can take from everyone, root included (3), or
    leave to CAP_SYS_PTRACE only (2)."""
    try:
        scope = read_proc(scope_path).strip()
    except OSError:
        scope = b""
    if scope == b"3":
        return ("this kernel forbids it to every process: kernel.yama.ptrace_scope is 3, "
                "which only a reboot lowers")  # fmt: skip
    return "needs CAP_SYS_PTRACE" + (", kernel.yama.ptrace_scope being 2" if scope == b"2" else "")


def cpu_index_of_thread(pid: int, tid: int) -> int | None:
    """The CPU index that QEMU's name for thread ``tid`` of ``pid`` (``CPU N/KVM``)
    gives; None when it has no such name.  :class:`OSError` when ``tid`` is no thread of
    ``pid`` (any more)."""
    return cpu_index_named(read_proc(f"/proc/{pid}/task/{tid}/comm").decode(errors="replace"))


def cpu_index_named(name: str) -> int | None:
    """The CPU index a thread's name gives (QEMU's ``CPU N/KVM``), else None."""
    match = _CPU_THREAD.match(name.strip())
    return int(match.group(1)) if match is not None else None


def cpu_index_of_threads(pid: int) -> dict[int, int]:
    """QEMU's vCPU threads of ``pid``: thread id -> CPU index (from ``CPU N/KVM``)."""
    out: dict[int, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in map(int, tasks):
        with contextlib.suppress(OSError):
            if (index := cpu_index_of_thread(pid, tid)) is not None:
                out[tid] = index
    return out


def thread_count(pid: int) -> int:
    """How many threads ``pid`` has now (``/proc/PID/stat``; 0 if it is gone)."""
    try:
        stat = read_proc(f"/proc/{pid}/stat")
    except OSError:
        return 0
    # after "(comm)", which may hold spaces: state is field 3, num_threads field 20
    return int(stat[stat.rindex(b")") + 2 :].split()[17])


@dataclass
class AttachedVm:
    """Copies of one VMM's stats fds, opened as stats files; ``close`` releases them."""

    pid: int
    pidfd: int
    vm: StatsFile | None = None
    vcpus: dict[int, StatsFile] = field(default_factory=dict)  # CPU index -> file
    vcpu_ids: set[int] = field(default_factory=set)  # KVM's vcpu_ids of those files
    sources: dict[StatsFile, int] = field(default_factory=dict)  # copy -> the VMM's fd
    #: the threads that created the vCPU files: thread id -> the CPU index it is named for
    threads: dict[int, int | None] = field(default_factory=dict)
    strangers: set[int] = field(default_factory=set)  # of those, not threads of ``pid``
    uid: int | None = None  # the process's effective uid, when its listing read it

    def release_pidfd(self) -> None:
        """Let the VMM's pidfd go (whoever keeps the files watches the VMM their way)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def take_pidfd(self) -> int:
        """The VMM's pidfd, for the caller to watch it with (and close)."""
        pidfd, self.pidfd = self.pidfd, -1
        return pidfd

    def close(self) -> None:
        for file in [self.vm, *self.vcpus.values()]:
            if file is not None:
                file.close()
        self.vm = None
        self.vcpus = {}
        self.sources = {}
        self.release_pidfd()


def attach(pid: int, *, skip_vm: bool = False, skip_vcpus: Collection[int] = (),
           listed: FdListing | None = None) -> AttachedVm:  # fmt: skip
    """Copy the stats fds of process ``pid``; vCPUs by CPU index.  ``skip_vm`` and
    ``skip_vcpus`` (KVM vcpu_ids) leave out what is held already: a later scan takes only
    hot-plugged vCPUs.  ``listed``: its stats and control fds as a scan just read them
    (each copy is checked to be what was listed: the process may have changed since),
    with its vCPU threads' names if the scan read them too.

    The same vCPU held twice (a dup, or Python's ``mmap`` of a vcpu fd) is taken once.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        raise AttachError(f"no process {pid}: {exc.strerror}") from exc
    vm = AttachedVm(pid, pidfd)
    try:
        listing = listed if listed is not None else fd_links(pid)
        named = listing.vcpu_threads or {}
        vm.uid = listing.uid
        vms = vm_count(pid, listing.control)
        if vms > 1:
            raise AttachError(
                f"process {pid} runs {vms} VMs: its stats fds do not say which VM each "
                "belongs to (the kernel gives them the same names and ids), so it is not served"
            )
        taken: list[tuple[int, int | None, StatsFile]] = []  # vcpu_id, named index, file
        for link in listing.links:
            if link.vcpu_id is None and (skip_vm or vm.vm is not None):
                continue
            if link.vcpu_id is not None and (link.vcpu_id in skip_vcpus
                                             or link.vcpu_id in vm.vcpu_ids):  # fmt: skip
                continue  # the same vCPU twice (a dup) is taken once
            copied = copy_fd(pidfd, link.fd)
            file = (StatsFile(copied, owned=True) if listed is None
                    else _open_as_listed(pid, copied, link))  # fmt: skip
            vm.sources[file] = link.fd
            if link.vcpu_id is None:
                vm.vm = file
                continue
            match = _VCPU_ID.match(file.id)
            creator = int(match.group(1)) if match else 0
            if creator in named and creator not in vm.threads:  # read with the listing
                vm.threads[creator] = cpu_index_named(named[creator])
            elif creator not in vm.threads:  # only the creators' names: a VMM has more threads
                try:
                    vm.threads[creator] = cpu_index_of_thread(pid, creator)
                except (FileNotFoundError, ProcessLookupError):  # not a thread of its
                    vm.threads[creator] = None  # (copies of another's), or ended
                    vm.strangers.add(creator)
                except OSError as exc:  # out of fds, say: not a reason to take it for copies
                    raise AttachError(f"cannot read the name of thread {creator} of "
                                      f"process {pid}: {exc.strerror}") from exc  # fmt: skip
            taken.append((link.vcpu_id, vm.threads[creator], file))
            vm.vcpu_ids.add(link.vcpu_id)
        vm.vcpus = dict(sorted(_by_index(taken).items()))
    except BaseException:
        vm.close()
        raise
    return vm


def _open_as_listed(pid: int, copied: int, link: StatsFdLink) -> StatsFile:
    """The copy ``copied`` of the fd ``link`` lists, opened as a stats file once checked
    to be what was listed: the process may have closed it, and opened another file at
    its number, since.  The copy's inode (the kernel's anonymous one: no regular file,
    pipe or device, whose read might block) and its id (the header's: the vCPU it names)
    tell, and only where they do not is its name read: 7 us a copy, 2,048 copies at a
    first scan of 256 VMs.  The copy is closed unless it is returned."""
    try:
        if _anonymous(copied):
            with contextlib.suppress(BinaryStatsError):  # another anonymous file
                file = StatsFile(copied)
                if _names(file.id, link):
                    file.owned = True
                    return file
        if os.readlink(f"/proc/self/fd/{copied}") == link.target:
            return StatsFile(copied, owned=True)  # a broken stats file says so
    except BaseException:
        os.close(copied)
        raise
    os.close(copied)
    raise AttachError(f"process {pid} changed its fds while they were taken")


@functools.cache
def _anonymous_inode() -> tuple[int, int]:
    """The device and number of the inode the kernel's anonymous files share (an
    eventfd's, KVM's fds', epoll's...)."""
    fd = os.eventfd(0)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def _anonymous(fd: int) -> bool:
    """Is ``fd`` one of the kernel's anonymous files?"""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == _anonymous_inode()


def _names(ident: str, link: StatsFdLink) -> bool:
    """Does a stats file's id name what ``link`` lists: its VM (``kvm-PID``), or its
    vCPU (``kvm-TID/vcpu-ID``)?"""
    if link.vcpu_id is None:
        return _VM_ID.match(ident) is not None
    match = _VCPU_ID.match(ident)
    return match is not None and int(match.group(2)) == link.vcpu_id


def _by_index(taken: list[tuple[int, int | None, StatsFile]]) -> dict[int, StatsFile]:
    """The vCPU files by CPU index: the ``CPU N/KVM`` names of their creator threads when
    every one has a name and no two share one, else KVM's vcpu_ids.  Thread names are
    the VMM's to choose: a VMM that names two threads ``CPU 0/KVM`` must not make one of
    its vCPUs vanish."""
    named = [index for _, index, _ in taken]
    if None not in named and len(set(named)) == len(named):
        return {index: file for (_, index, file) in taken if index is not None}
    return {vcpu_id: file for vcpu_id, _, file in taken}


def creator_thread(file: StatsSource) -> int:
    """The id of the thread that created a stats fd (from its id string; 0 if unknown):
    for QEMU, the vCPU's own thread."""
    match = _CREATOR.match(file.id)
    return int(match.group(1)) if match is not None else 0


def creators(files: Iterable[StatsSource]) -> set[int]:
    """The thread ids that created these stats fds."""
    return {tid for tid in map(creator_thread, files) if tid}


def owns(pid: int, vm: AttachedVm) -> bool:
    """Is ``pid`` the VMM that created these fds (not a process holding copies, such as
    the parent of our demo VM, or another reader)?"""
    if vm.threads.keys() - vm.strangers:  # :func:`attach` found a creator among its threads
        return True
    files = [f for f in [vm.vm, *vm.vcpus.values()] if f is not None]
    return any(os.path.exists(f"/proc/{pid}/task/{tid}") for tid in creators(files))
