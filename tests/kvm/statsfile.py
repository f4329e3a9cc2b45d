"""Build binary stats files byte by byte, for parser tests on real files (no mocks)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CUMULATIVE, INSTANT, PEAK, LINEAR_HIST, LOG_HIST = 0, 1, 2, 3, 4
NONE, BYTES, SECONDS, CYCLES, BOOLEAN = 0x00, 0x10, 0x20, 0x30, 0x40
POW10, POW2 = 0x000, 0x100


@dataclass
class Desc:
    name: str
    flags: int = CUMULATIVE
    exponent: int = 0
    size: int = 1
    offset: int | None = None  # None: packed after the previous one
    bucket_size: int = 0
    raw_name: bytes | None = None  # overrides the NUL-padded name


@dataclass
class StatsFileSpec:
    descs: list[Desc]
    values: list[int] = field(default_factory=list)
    name_size: int = 48
    flags: int = 0
    ident: bytes = b"kvm-1/vcpu-0"
    num_desc: int | None = None
    id_offset: int | None = None
    desc_offset: int | None = None
    data_offset: int | None = None
    truncate_to: int | None = None

    def build(self) -> bytes:
        offset = 0
        for d in self.descs:
            if d.offset is None:
                d.offset = offset
            offset = d.offset + d.size * 8
        end = max((d.offset + d.size * 8 for d in self.descs if d.offset is not None), default=0)
        data_words = min(end // 8, 4096)  # absurd offsets are the point of some tests
        values = (self.values + [0] * data_words)[:data_words]
        id_offset = 24 if self.id_offset is None else self.id_offset
        desc_offset = id_offset + self.name_size if self.desc_offset is None else self.desc_offset
        desc_block = b"".join(
            struct.pack("=IhHII", d.flags, d.exponent, d.size, d.offset or 0, d.bucket_size)
            + (d.raw_name if d.raw_name is not None else d.name.encode()).ljust(
                self.name_size, b"\0"
            )[: self.name_size]
            for d in self.descs
        )
        data_offset = (
            desc_offset + len(desc_block) if self.data_offset is None else self.data_offset
        )
        num_desc = len(self.descs) if self.num_desc is None else self.num_desc
        header = struct.pack(
            "=6I", self.flags, self.name_size, num_desc, id_offset, desc_offset, data_offset
        )
        out = bytearray(max(data_offset + len(values) * 8, desc_offset + len(desc_block), 24))
        # Written from data to header, so that where blocks overlap the metadata survives
        # and the parser, not a garbled name, must notice.
        out[data_offset : data_offset + len(values) * 8] = struct.pack(f"={len(values)}Q", *values)
        out[desc_offset : desc_offset + len(desc_block)] = desc_block
        ident = self.ident.ljust(self.name_size, b"\0")[: self.name_size]
        out[id_offset : id_offset + self.name_size] = ident
        out[0:24] = header
        return bytes(out[: self.truncate_to] if self.truncate_to is not None else out)
