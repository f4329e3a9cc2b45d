"""gzip for ``/metrics`` pages whose large head stands still between scrapes.

Prometheus asks for gzip at every scrape.  At 256 VMs x 8 vCPUs a page is 23 MB, and
zlib at its fastest level takes about 120 ms here to compress it: as long again as
making the page, every scrape, though the VMs' text (the head) is the very same object
while they stand still and only vmstats' own lines (the tail: the scrape's duration)
changed.  So the head is compressed once, up to a sync flush (its deflate output ends
on a byte boundary there), and the compressor's state after it is kept: each page
then costs a copy of that state and the tail's few hundred bytes.  The reply is one
gzip member, whose CRC and length cover head and tail, as every client expects (not a
series of members, which some clients read only the first of).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Hashable
from dataclasses import dataclass

#: zlib's fastest level: a page is mostly repeated label text, which it already
#: shrinks about 8x (a higher level costs several times the CPU for a few % more).
LEVEL = 1
#: Heads at least this large are compressed in a thread (zlib lets the loop run) and kept.
IN_THREAD = 64 * 1024
_GZIP = 16 + zlib.MAX_WBITS  # wbits for a gzip header and trailer


@dataclass(frozen=True)
class _CompressedHead:
    """A head's deflate output up to a sync flush, and the compressor's state there."""

    output: bytes
    state: zlib._Compress

    @classmethod
    def of(cls, head: bytes) -> _CompressedHead:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _GZIP)
        output = compressor.compress(head) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return cls(output, compressor)

    def with_tail(self, tail: bytes) -> bytes:
        compressor = self.state.copy()  # the kept state stays at the head's end
        return self.output + compressor.compress(tail) + compressor.flush()


class GzipPages:
    """gzip of ``head + tail``.  A large head's compression is kept by identity, the
    last head of each ``kind`` (a page's content type: its classic text and OpenMetrics
    heads differ), so what is kept is the head the exposition keeps too, not megabytes
    of its own; requests that come together for a new head share its compression.  A
    small head (an error's text, a host of few VMs) is compressed each time and kept by
    nobody."""

    def __init__(self) -> None:
        self._heads: dict[Hashable, tuple[bytes, asyncio.Future[_CompressedHead]]] = {}

    async def gzipped(self, head: bytes, tail: bytes = b"", kind: Hashable = None) -> bytes:
        if len(head) < IN_THREAD:
            return _CompressedHead.of(head).with_tail(tail)
        kept = self._heads.get(kind)
        if kept is not None and kept[0] is head:
            found = kept[1]
        else:
            found = asyncio.ensure_future(asyncio.to_thread(_CompressedHead.of, head))
            self._heads[kind] = (head, found)
        try:
            compressed = await asyncio.shield(found)  # a client gone does not cancel the others'
        except Exception:  # out of memory: the next request tries again
            if self._heads.get(kind, (b"", None))[1] is found:
                del self._heads[kind]
            raise
        return compressed.with_tail(tail)
