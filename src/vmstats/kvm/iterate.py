"""Every process's KVM fds, and every thread named as a vCPU, in one pass in the kernel:
two BPF iterators, for a scan that must look into many processes at once (the daemon's
first scan of a busy host, a burst of VMs starting).

Through ``/proc`` a process's fds take a ``readlink`` each: about 6 us of the kernel's
time here (it makes each ``/proc/PID/fd/N`` entry at its first lookup) and Python's call
around it.  A host of 256 VMs has about 10,000 such fds (70 to 100 ms of a first scan),
and reading the names of their 2,048 vCPU threads took 45 to 65 ms more.  The
``task_file`` iterator walks every open file of every process in the kernel and hands
back only those whose path, as ``readlink`` would say it (``bpf_d_path``), is a KVM anon
inode (``anon_inode:kvm-...``); the ``task`` iterator hands back the threads whose name
begins with ``CPU `` (QEMU's ``CPU N/KVM``).  At 256 VMs x 8 vCPUs: 2,304 files and 2,048
threads, in 7 to 9 ms of the kernel's time and 2 to 3 of Python's.

The programs read a few members of the kernel's structs (a task's ``tgid``, ``pid`` and
``comm``, its credentials' effective uid, a file's ``f_path`` and ``f_inode``, its
inode's superblock and the superblock's magic), placed by this kernel's BTF
(:mod:`vmstats.btf`); the verifier checks each against the same BTF, so a program that
would read the wrong member is refused, not run.  They need root (``CAP_BPF``,
``CAP_PERFMON``), BTF, Linux >= 5.14, and this process in the host's pid namespace (they
hand back the kernel's pids).  Where one is missing, :class:`KvmIterator` says why, and
the scanner lists ``/proc``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmstats.btf import Btf, BtfError, func_id
from vmstats.ebpf import (
    ADD64_K,
    AND64_X,
    BPF_ITER_CREATE,
    BPF_LINK_CREATE,
    BPF_PROG_TYPE_TRACING,
    BPF_TRACE_ITER,
    CALL,
    EXIT,
    FP,
    FUNC_D_PATH,
    FUNC_GET_CURRENT_PID_TGID,
    FUNC_SEQ_WRITE,
    JEQ_K,
    JNE_K,
    JNE_X,
    JSLT_K,
    LDX_MEM,
    MOV64_K,
    MOV64_X,
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    R8,
    RSH64_K,
    ST_MEM_DW,
    STX_MEM,
    Jump,
    ProgramRefused,
    assemble,
    bpf,
    hint,
    insn,
    load,
    load_imm64,
    run_syscall,
)

#: What ``readlink`` says of every KVM fd: the programs hand back only these.
KVM_PREFIX = b"anon_inode:kvm-"
#: The superblock of every anon inode's file (include/uapi/linux/magic.h).
ANON_INODE_FS_MAGIC = 0x09041934
#: The name QEMU gives its vCPU threads begins so (``CPU 3/KVM``).
VCPU_THREAD_PREFIX = b"CPU "
#: One file handed back: its process, its fd, the process's effective uid (what its
#: ``/proc/PID/status`` says: whose VM it is), 4 bytes of padding, its path (NUL-padded;
#: longer ones are no KVM fd: ``anon_inode:kvm-vcpu-stats:4095`` is 30 bytes).
_FILE = struct.Struct("=III4x48s")
_PATH_AT = 16  # where the path lies in a file's record
#: One thread handed back: its process, its id, its name (``comm``, 16 bytes at most).
_THREAD = struct.Struct("=II16s")
#: ``struct bpf_iter__task_file`` and ``bpf_iter__task``: meta, task, fd, file.
_CTX_META, _CTX_TASK, _CTX_FD, _CTX_FILE = 0, 8, 16, 24
_LINK_ATTR = struct.Struct("=IIIIQII")  # prog fd, target fd, attach type, flags, iter info


class IteratorUnavailable(Exception):
    """Why this kernel or process cannot list fds by iterator (then ``/proc`` serves)."""


class PassTooBig(Exception):
    """A pass handed back more than it may: this scan lists ``/proc``, within its budget."""


@dataclass
class Iteration:
    """What one pass found: every process's KVM fds, and its threads named as vCPUs."""

    files: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # pid -> (fd, link)
    uids: dict[int, int] = field(default_factory=dict)  # pid -> effective uid
    threads: dict[int, dict[int, str]] = field(default_factory=dict)  # pid -> tid -> name


def _epilogue() -> list[bytes | Jump | str]:
    return ["out", insn(MOV64_K, R0, imm=0), insn(EXIT)]


def _seq_write(size: int) -> list[bytes | Jump | str]:
    """``bpf_seq_write(ctx->meta->seq, fp - size, size)``: hand back the record (the
    context in r6)."""
    return [
        insn(LDX_MEM[8], R1, R6, _CTX_META),
        insn(LDX_MEM[8], R1, R1, 0),  # meta->seq
        insn(MOV64_X, R2, FP),
        insn(ADD64_K, R2, imm=-size),
        insn(MOV64_K, R3, imm=size),
        insn(CALL, imm=FUNC_SEQ_WRITE),
    ]


@dataclass(frozen=True)
class Places:
    """Where the members the programs read lie, in bytes, in this kernel's structs."""

    tgid: int  # struct task_struct
    pid: int
    comm: int
    cred: int
    euid: int  # struct cred
    f_inode: int  # struct file
    i_sb: int  # struct inode
    s_magic: int  # struct super_block

    @classmethod
    def of(cls, btf: Btf) -> Places:
        wanted = [("task_struct", "tgid"), ("task_struct", "pid"), ("task_struct", "comm"),
                  ("task_struct", "cred"), ("cred", "euid"), ("file", "f_inode"),
                  ("inode", "i_sb"), ("super_block", "s_magic")]  # fmt: skip
        layouts = {name: btf.struct(name).named for name in dict(wanted)}
        for struct_name, member in wanted:
            if member not in layouts[struct_name]:
                raise BtfError(f"struct {struct_name} has no member {member}")
        return cls(*(layouts[struct_name][member] for struct_name, member in wanted))


def files_program(places: Places, f_path: int) -> bytes:
    """For every open file of a process (its main thread's fd table, as ``/proc/PID/fd``):
    its ``(tgid, fd, euid, path)`` if its path begins ``anon_inode:kvm-`` (but a vCPU's
    control fd, ``kvm-vcpu:N``: two of each vCPU's three fds here).  Only an anon inode's
    path is made (its superblock's magic tells, three loads): a host's other files, most
    of them, cost the pass next to nothing (15,000 fds of /dev/null: 9 ms with a path
    made for each)."""
    size, path = _FILE.size, _PATH_AT
    prefix = KVM_PREFIX.ljust(16, b"\0")
    return assemble([
        insn(MOV64_X, R6, R1),
        insn(LDX_MEM[8], R7, R6, _CTX_FILE),
        Jump(JEQ_K, "out", R7),  # the end of the pass
        insn(LDX_MEM[8], R8, R6, _CTX_TASK),
        Jump(JEQ_K, "out", R8),
        insn(LDX_MEM[4], R1, R8, places.pid),  # a thread with an fd table of its own
        insn(LDX_MEM[4], R2, R8, places.tgid),  # (clone without CLONE_FILES): not the
        Jump(JNE_X, "out", R1, R2),  # process's, which /proc/PID/fd and pidfd_getfd use
        insn(LDX_MEM[8], R1, R7, places.f_inode),
        insn(LDX_MEM[8], R1, R1, places.i_sb),
        insn(LDX_MEM[8], R1, R1, places.s_magic),
        Jump(JNE_K, "out", R1, imm=ANON_INODE_FS_MAGIC),
        *[insn(ST_MEM_DW, FP, off=offset - size) for offset in range(0, size, 8)],
        insn(LDX_MEM[4], R1, R8, places.tgid),
        insn(STX_MEM[4], FP, R1, -size),
        insn(LDX_MEM[4], R1, R6, _CTX_FD),
        insn(STX_MEM[4], FP, R1, 4 - size),
        insn(LDX_MEM[8], R1, R8, places.cred),  # task->cred->euid
        insn(LDX_MEM[4], R1, R1, places.euid),
        insn(STX_MEM[4], FP, R1, 8 - size),
        insn(MOV64_X, R1, R7),
        insn(ADD64_K, R1, imm=f_path),  # &file->f_path
        insn(MOV64_X, R2, FP),
        insn(ADD64_K, R2, imm=path - size),
        insn(MOV64_K, R3, imm=size - path),
        insn(CALL, imm=FUNC_D_PATH),
        Jump(JSLT_K, "out", R0),  # too long, or no path
        insn(LDX_MEM[8], R1, FP, path - size),
        *load_imm64(R2, int.from_bytes(prefix[:8], "little")),
        Jump(JNE_X, "out", R1, R2),
        insn(LDX_MEM[8], R1, FP, path + 8 - size),
        *load_imm64(R2, (1 << 8 * (len(KVM_PREFIX) - 8)) - 1),  # the prefix's last bytes
        insn(AND64_X, R1, R2),
        *load_imm64(R2, int.from_bytes(prefix[8:], "little")),
        Jump(JNE_X, "out", R1, R2),
        insn(LDX_MEM[1], R1, FP, path - size + len(KVM_PREFIX) + 4),
        Jump(JEQ_K, "out", R1, imm=ord(":")),  # kvm-vcpu:N, a vCPU's control fd: not needed
        *_seq_write(size),
        *_epilogue(),
    ])  # fmt: skip


def threads_program(places: Places) -> bytes:
    """For every thread: its ``(tgid, pid, comm)`` if its name begins ``CPU ``."""
    size, comm = _THREAD.size, places.comm
    return assemble([
        insn(MOV64_X, R6, R1),
        insn(LDX_MEM[8], R7, R6, _CTX_TASK),
        Jump(JEQ_K, "out", R7),  # the end of the pass
        insn(LDX_MEM[4], R1, R7, comm),
        *load_imm64(R2, int.from_bytes(VCPU_THREAD_PREFIX, "little")),
        Jump(JNE_X, "out", R1, R2),
        insn(LDX_MEM[4], R1, R7, places.tgid),
        insn(STX_MEM[4], FP, R1, -size),
        insn(LDX_MEM[4], R1, R7, places.pid),
        insn(STX_MEM[4], FP, R1, 4 - size),
        insn(LDX_MEM[8], R1, R7, comm),
        insn(STX_MEM[8], FP, R1, 8 - size),
        insn(LDX_MEM[8], R1, R7, comm + 8),
        insn(STX_MEM[8], FP, R1, 16 - size),
        *_seq_write(size),
        *_epilogue(),
    ])  # fmt: skip


def kernel_tgid() -> int:
    """This process's id as the kernel's programs see it (``bpf_get_current_pid_tgid``):
    not :func:`os.getpid` in a pid namespace of its own, where the pids the iterators
    hand back would name other processes, or none."""
    code = [insn(CALL, imm=FUNC_GET_CURRENT_PID_TGID), insn(RSH64_K, R0, imm=32), insn(EXIT)]
    return run_syscall(b"".join(code), b"vmstats_tgid")


class KvmIterator:
    """The two iterators, loaded once: each :meth:`read` is one pass of each."""

    def __init__(self) -> None:
        self._fds: list[int] = []  # each program, then its link
        self._files = self._threads = -1
        try:
            if kernel_tgid() != os.getpid():
                raise IteratorUnavailable("this process is in a pid namespace of its own")
            btf = Btf()
            places = Places.of(btf)
            file = btf.struct("file")
            # f_path: a member of its own, or (Linux >= 6.13) in an anonymous union:
            # the verifier takes only the offset where a struct path lies
            paths = [file.named["f_path"]] if "f_path" in file.named else file.anonymous
            self._files = self._link("bpf_iter_task_file", b"vmstats_fds",
                                     [files_program(places, at) for at in paths])  # fmt: skip
            self._threads = self._link("bpf_iter_task", b"vmstats_threads",
                                       [threads_program(places)])  # fmt: skip
        except IteratorUnavailable:
            self.close()
            raise
        except BtfError as exc:
            self.close()
            raise IteratorUnavailable(str(exc)) from None
        except OSError as exc:
            self.close()
            raise IteratorUnavailable(f"cannot load BPF programs: {exc.strerror}"
                                      f"{hint(exc.errno)}") from None  # fmt: skip

    def _link(self, target: str, name: bytes, candidates: Sequence[bytes]) -> int:
        """The first candidate program the verifier takes, attached as iterator ``target``."""
        btf_id = func_id(target)
        refused: ProgramRefused | None = None
        for code in candidates:
            try:
                prog = load(BPF_PROG_TYPE_TRACING, code, name, attach_type=BPF_TRACE_ITER,
                            attach_btf_id=btf_id)  # fmt: skip
            except ProgramRefused as exc:
                refused = exc
                continue
            self._fds.append(prog)
            try:
                link = bpf(BPF_LINK_CREATE, _LINK_ATTR.pack(prog, 0, BPF_TRACE_ITER, 0, 0, 0, 0))
            except OSError as exc:
                raise IteratorUnavailable(f"cannot attach an iterator: {exc.strerror}") from None
            self._fds.append(link)
            return link
        if refused is None:
            raise IteratorUnavailable(f"no program for the {target} iterator")
        detail = f" ({refused.words})" if refused.words else ""
        raise IteratorUnavailable(f"the kernel refuses the {target} iterator: "
                                  f"{refused.strerror}{detail}{hint(refused.errno)}")  # fmt: skip

    @staticmethod
    def _pass(link: int, record: int, most: int) -> bytes:
        """The records of one pass of ``link``; :class:`PassTooBig` past ``most`` of them
        (the pass is left there: the rest is never made)."""
        fd = bpf(BPF_ITER_CREATE, struct.pack("=II", link, 0))
        try:
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                size += len(chunk)
                if size > most * record:
                    raise PassTooBig(f"more than {most} records")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read(self, most: int) -> Iteration:
        """One pass: the KVM fds of every process (but none of a process that has none),
        and its threads named ``CPU ...``; :class:`PassTooBig` past ``most`` of either
        (whoever may use ``/dev/kvm`` can open KVM fds by the thousand, and name threads:
        a pass must cost no more than a scan's budget); :class:`OSError` if the kernel
        fails it."""
        found = Iteration()
        files, uids = found.files, found.uids
        for pid, fd, euid, path in _FILE.iter_unpack(self._pass(self._files, _FILE.size, most)):
            link = path.split(b"\0", 1)[0].decode(errors="replace")
            files.setdefault(pid, []).append((fd, link))
            uids[pid] = euid
        threads = found.threads
        for pid, tid, comm in _THREAD.iter_unpack(self._pass(self._threads, _THREAD.size, most)):
            name = comm.split(b"\0", 1)[0].decode(errors="replace")
            threads.setdefault(pid, {})[tid] = name
        return found

    def close(self) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds = []
        self._files = self._threads = -1
