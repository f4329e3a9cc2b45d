"""The Linux KVM binary statistics file (``KVM_GET_STATS_FD``): parse, validate, read.

Layout (host-endian): a 24-byte header at offset 0, an id string, ``num_desc``
descriptors of ``16 + name_size`` bytes, and the data block of u64 values; the blocks are
found through the header's offsets only.  Everything but the data is immutable, so the
header and descriptors are parsed once per distinct layout (every vCPU of a kernel shares
one) and a read is a single ``pread`` of the data decoded by one precompiled
``struct.Struct``.

Nothing the kernel hands over is trusted: sizes, offsets, names and flags are checked,
and a malformed file raises :class:`BinaryStatsError` naming the problem.  Unknown stat
types, units and bases are *not* errors here: the file is well formed, the provider
decides what to do with them (as QEMU does, see :mod:`.provider`).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from vmstats.errors import BinaryStatsError

log = logging.getLogger(__name__)

HEADER = struct.Struct("=IIIIII")  # flags name_size num_desc id_offset desc_offset data_offset
DESCRIPTOR = struct.Struct("=IhHII")  # flags exponent size offset bucket_size (+ name)

TYPE_MASK, UNIT_MASK, BASE_MASK = 0xF, 0xF0, 0xF00
KNOWN_FLAG_BITS = TYPE_MASK | UNIT_MASK | BASE_MASK

# Limits far above any real kernel (48-byte names, tens of descriptors, ~1 KiB of data)
# that keep a hostile or corrupt file from making us allocate or loop without bound.
MAX_NAME_SIZE = 4096
MAX_NUM_DESC = 65536
MAX_DESCRIPTOR_BLOCK = 16 << 20
MAX_DATA_SIZE = 16 << 20
#: What a first read of a stats file takes: a vCPU's header, id and descriptors (under
#: 4 KiB in every kernel so far) and usually its data too.
FIRST_READ = 8192


class KvmStatsType(IntEnum):
    CUMULATIVE = 0x0
    INSTANT = 0x1
    PEAK = 0x2
    LINEAR_HIST = 0x3
    LOG_HIST = 0x4


class KvmStatsUnit(IntEnum):
    NONE = 0x00
    BYTES = 0x10
    SECONDS = 0x20
    CYCLES = 0x30
    BOOLEAN = 0x40


class KvmStatsBase(IntEnum):
    POW10 = 0x000
    POW2 = 0x100


@dataclass(frozen=True, slots=True)
class StatsHeader:
    flags: int
    name_size: int
    num_desc: int
    id_offset: int
    desc_offset: int
    data_offset: int


@dataclass(frozen=True, slots=True)
class StatsDescriptor:
    """One ``struct kvm_stats_desc``; ``offset`` is in bytes from the data block start."""

    name: str
    flags: int
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def type_bits(self) -> int:
        return self.flags & TYPE_MASK

    @property
    def unit_bits(self) -> int:
        return self.flags & UNIT_MASK

    @property
    def base_bits(self) -> int:
        return self.flags & BASE_MASK

    @property
    def unknown_bits(self) -> int:
        return self.flags & ~KNOWN_FLAG_BITS

    @property
    def index(self) -> int:
        """Position of the first value in the decoded tuple of u64s."""
        return self.offset // 8


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class StatsLayout:
    """Everything immutable about a stats file except its id: shared between vCPUs.

    Compared and hashed by identity: the :class:`LayoutCache` makes one per distinct
    header and descriptor block, so identity is equality, and a dict lookup stays cheap.
    What is derived from a layout can be kept beside it, weakly (it goes with it)."""

    header: StatsHeader
    descriptors: tuple[StatsDescriptor, ...]
    data_size: int
    decoder: struct.Struct


def _pread(fd: int, size: int, offset: int, what: str) -> bytes:
    """Up to ``size`` bytes of ``fd`` at ``offset`` (fewer at its end)."""
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise BinaryStatsError(f"failed to read {what}: {exc.strerror}") from exc


def _pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    data = _pread(fd, size, offset, what)
    if len(data) != size:
        raise BinaryStatsError(f"failed to read {what}: expected {size} actual {len(data)}")
    return data


def _block(fd: int, start: bytes, size: int, offset: int, what: str) -> bytes:
    """A block of ``fd``: from ``start`` (its first bytes, read already) when it lies
    there, else read."""
    if offset + size <= len(start):
        return start[offset : offset + size]
    return _pread_exact(fd, size, offset, what)


def parse_header(raw: bytes) -> StatsHeader:
    """The header, checked for sanity.  Its ``flags`` are always 0 today and ignored (as
    QEMU does); :class:`LayoutCache` logs non-zero flags once per layout."""
    header = StatsHeader(*HEADER.unpack(raw))
    if not 2 <= header.name_size <= MAX_NAME_SIZE:
        raise BinaryStatsError(f"header: name_size {header.name_size} is not sane")
    if header.num_desc > MAX_NUM_DESC:
        raise BinaryStatsError(f"header: num_desc {header.num_desc} is not sane")
    if header.num_desc * (DESCRIPTOR.size + header.name_size) > MAX_DESCRIPTOR_BLOCK:
        raise BinaryStatsError(f"header: descriptor block of {header.num_desc} is too large")
    for field in ("id_offset", "desc_offset", "data_offset"):
        if getattr(header, field) < HEADER.size:
            raise BinaryStatsError(f"header: {field} {getattr(header, field)} is inside the header")
    return header


def _c_string(raw: bytes, what: str) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise BinaryStatsError(f"{what} is not NUL-terminated")
    try:
        return raw[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise BinaryStatsError(f"{what} is not ASCII") from exc


def parse_descriptors(header: StatsHeader, raw: bytes) -> tuple[StatsDescriptor, ...]:
    step = DESCRIPTOR.size + header.name_size
    out = []
    seen: set[str] = set()
    for i in range(header.num_desc):
        base = i * step
        flags, exponent, size, offset, bucket_size = DESCRIPTOR.unpack_from(raw, base)
        name = _c_string(raw[base + DESCRIPTOR.size : base + step], f"descriptor {i}: name")
        where = f"descriptor {i} ({name!r})"
        if not name:
            raise BinaryStatsError(f"descriptor {i}: empty name")
        if name in seen:
            raise BinaryStatsError(f"{where}: duplicate name")
        if size == 0:
            raise BinaryStatsError(f"{where}: size 0")
        if offset % 8:
            raise BinaryStatsError(f"{where}: offset {offset} is not 8-byte aligned")
        seen.add(name)
        out.append(StatsDescriptor(name, flags, exponent, size, offset, bucket_size))
    return tuple(out)


def _data_size(descriptors: tuple[StatsDescriptor, ...]) -> int:
    """Size of the data block: the end of the last value.  Values must not overlap."""
    end = 0
    previous: StatsDescriptor | None = None
    for desc in sorted(descriptors, key=lambda d: d.offset):
        if previous is not None and desc.offset < previous.offset + previous.size * 8:
            raise BinaryStatsError(
                f"descriptors {previous.name!r} and {desc.name!r} overlap in the data block"
            )
        end = max(end, desc.offset + desc.size * 8)
        previous = desc
    if end > MAX_DATA_SIZE:
        raise BinaryStatsError(f"data block of {end} bytes is too large")
    return end


def _check_blocks(header: StatsHeader, desc_size: int, data_size: int) -> None:
    blocks = sorted(
        [
            ("header", 0, HEADER.size),
            ("id", header.id_offset, header.name_size),
            ("descriptors", header.desc_offset, desc_size),
            ("data", header.data_offset, data_size),
        ],
        key=lambda b: b[1],
    )
    for (name_a, start_a, size_a), (name_b, start_b, _) in itertools.pairwise(blocks):
        if size_a and start_a + size_a > start_b:
            raise BinaryStatsError(f"the {name_a} and {name_b} blocks overlap")


class LayoutCache:
    """Parsed layouts keyed by the raw header and descriptor bytes.

    Every fd's header and descriptors are still read and compared, so vCPUs with
    different layouts are never confused, yet parsing happens once per layout.  One
    ``pread`` of the file's start usually holds the header, id and descriptors, and a
    file of the last layout found (every vCPU of a kernel) is matched against its bytes
    in place.
    """

    def __init__(self) -> None:
        self._layouts: dict[bytes, StatsLayout] = {}
        self._lock = threading.Lock()
        # the last layout found, with its raw header and descriptors: every vCPU of a
        # kernel has it, and compared in place they need no copy, no key, no lock
        self._last: tuple[bytes, bytes, StatsLayout | None] = (b"", b"", None)

    def layout(self, fd: int) -> tuple[StatsLayout, str]:
        """The layout of the stats file ``fd`` and its id string."""
        start = _pread(fd, FIRST_READ, 0, "stats header")
        last_header, last_desc, layout = self._last
        if (layout is None or not start.startswith(last_header)
                or not start.startswith(last_desc, layout.header.desc_offset)):  # fmt: skip
            layout = self._find(fd, start)
        header = layout.header
        raw_id = _block(fd, start, header.name_size, header.id_offset, "stats id")
        return layout, _c_string(raw_id, "id")

    def _find(self, fd: int, start: bytes) -> StatsLayout:
        """The layout of a file whose first bytes are ``start``: parsed once per layout."""
        raw_header = _block(fd, start, HEADER.size, 0, "stats header")
        header = parse_header(raw_header)
        desc_size = header.num_desc * (DESCRIPTOR.size + header.name_size)
        raw_desc = _block(fd, start, desc_size, header.desc_offset, "stats descriptors")
        key = raw_header + raw_desc  # the whole header: its blocks were checked
        with self._lock:
            layout = self._layouts.get(key)
        if layout is None:
            layout = self._parse(header, raw_desc)
            with self._lock:
                layout = self._layouts.setdefault(key, layout)
        self._last = (raw_header, raw_desc, layout)
        return layout

    @staticmethod
    def _parse(header: StatsHeader, raw_desc: bytes) -> StatsLayout:
        if header.flags:  # a future kernel may define bits: say so once per layout
            log.warning("KVM stats header has unknown flags %#x; ignored", header.flags)
        descriptors = parse_descriptors(header, raw_desc)
        data_size = _data_size(descriptors)
        _check_blocks(header, len(raw_desc), data_size)
        return StatsLayout(header, descriptors, data_size, struct.Struct(f"={data_size // 8}Q"))


#: The process-wide cache (QEMU keeps one per target for the life of the process).
LAYOUTS = LayoutCache()


class StatsSource(Protocol):
    """What the KVM provider reads: a stats fd (:class:`StatsFile`), or values of the same
    layout that came another way (libvirt's, :mod:`vmstats.libvirt.values`)."""

    layout: StatsLayout
    id: str

    @property
    def omitted(self) -> frozenset[str]:
        """Stats of the layout this source has no value for."""
        ...

    def read_raw(self) -> bytes: ...

    def decode(self, raw: bytes) -> tuple[int, ...]: ...

    def close(self) -> None: ...


class StatsFile:
    """An open stats fd with its layout: ``read()`` is one pread and one unpack.

    The object does not own the fd unless ``owned``; :meth:`close` closes it then.
    """

    __slots__ = ("_offset", "_size", "_unpack", "fd", "id", "layout", "owned")

    #: Stats of the layout this file has no value for: none, for a kernel stats fd.
    omitted: frozenset[str] = frozenset()

    def __init__(self, fd: int, *, owned: bool = False, cache: LayoutCache = LAYOUTS) -> None:
        self.fd = fd
        self.owned = owned
        self.layout, self.id = cache.layout(fd)
        self._offset = self.layout.header.data_offset
        self._size = self.layout.data_size
        self._unpack = self.layout.decoder.unpack

    def read(self) -> tuple[int, ...]:
        """All u64 values of the data block, indexed by ``offset // 8``."""
        return self._unpack(self.read_raw())

    def read_raw(self) -> bytes:
        """The data block as it is: one pread (compare blocks to know what changed)."""
        try:
            data = os.pread(self.fd, self._size, self._offset)
        except OSError as exc:
            raise BinaryStatsError(f"failed to read data: {exc.strerror}") from exc
        if len(data) != self._size:
            raise BinaryStatsError(f"failed to read data: expected {self._size} actual {len(data)}")
        return data

    def decode(self, raw: bytes) -> tuple[int, ...]:
        """A data block (from :meth:`read_raw`) as its u64 values."""
        return self._unpack(raw)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
