"""The guest program: 16-bit real-mode x86 code, assembled here from its few opcodes.

One *round* is::

    mov dx, PORT ; mov cx, OUTS ; l1: out dx, al ; inc al ; loop l1
    mov cx, MMIOS ; l2: mov [0], al ; loop l2      ; DS points above guest RAM: MMIO
    hlt                                              ; exits to us (no in-kernel irqchip)
    jmp start

Ring 0 on purpose: on PVM hosts ring-0 code is run by KVM's instruction emulator, which is
exact and reproducible, and ring-3 guests with 3+ vCPUs die (see kvm-host-notes.md).
The counts per round are known, which is what makes the demo a source of exact stats.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CODE_ADDRESS = 0x1000
IO_PORT = 0x3F8
#: Guest RAM is 64 KiB at 0; DS is based here, just above it, so data writes are MMIO.
MMIO_ADDRESS = 0x10000


@dataclass(frozen=True)
class GuestProgram:
    """How many port writes and MMIO writes one round does before its HLT."""

    outs_per_round: int = 8
    mmio_per_round: int = 2

    def __post_init__(self) -> None:
        for field, value in (
            ("outs_per_round", self.outs_per_round),
            ("mmio_per_round", self.mmio_per_round),
        ):
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"{field} must be between 0 and 65535, not {value}")

    def assemble(self) -> bytes:
        code = bytearray()
        if self.outs_per_round:
            code += b"\xba" + struct.pack("<H", IO_PORT)  # mov dx, PORT
            code += b"\xb9" + struct.pack("<H", self.outs_per_round)  # mov cx, OUTS
            code += b"\xee\xfe\xc0\xe2\xfb"  # l1: out dx, al; inc al; loop l1
        if self.mmio_per_round:
            code += b"\xb9" + struct.pack("<H", self.mmio_per_round)  # mov cx, MMIOS
            code += b"\xa2\x00\x00\xe2\xfb"  # l2: mov [0], al; loop l2
        code += b"\xf4"  # hlt
        code += b"\xeb" + struct.pack("<b", -(len(code) + 2))  # jmp start
        return bytes(code)

    @property
    def instructions_per_round(self) -> int:
        """Instructions executed per round (what KVM's emulator counts on PVM)."""
        count = 2  # hlt, jmp
        if self.outs_per_round:
            count += 2 + 3 * self.outs_per_round
        if self.mmio_per_round:
            count += 1 + 2 * self.mmio_per_round
        return count

    @property
    def exits_per_round(self) -> int:
        """Exits to userspace per round: each OUT, each MMIO write and the HLT."""
        return self.outs_per_round + self.mmio_per_round + 1
