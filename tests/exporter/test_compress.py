"""gzip of /metrics pages: every reply is the page, one gzip member, and a large head
that stands still is compressed once however many tails follow it."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from vmstats.exporter import compress
from vmstats.exporter.compress import IN_THREAD, GzipPages

#: A head as a page's VMs give it: large, repeated label text.
HEAD = b"".join(b'kvm_vcpu_exits_total{vcpu="%d",vm="web%d"} %d.0\n' % (i % 8, i // 8, i * 7)
                for i in range(IN_THREAD // 16))  # fmt: skip


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The heads compressed from now on, in order."""
    made: list[bytes] = []
    real = compress._CompressedHead.of

    def counted(head: bytes) -> compress._CompressedHead:
        made.append(head)
        return real(head)

    monkeypatch.setattr(compress._CompressedHead, "of", staticmethod(counted))
    return made


def one_member(data: bytes) -> bytes:
    """``data`` inflated as exactly one gzip member (nothing after it)."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflate.decompress(data) + inflate.flush()
    assert inflate.eof
    assert inflate.unused_data == b""
    return out


def test_each_reply_is_its_page_and_the_head_is_compressed_once(compressions: list[bytes]) -> None:
    async def main() -> list[bytes]:
        pages = GzipPages()
        return [await pages.gzipped(HEAD, b"vmstats_scrape_duration_seconds %d\n" % i)
                for i in range(3)]  # fmt: skip

    replies = asyncio.run(main())
    for i, reply in enumerate(replies):
        assert one_member(reply) == HEAD + b"vmstats_scrape_duration_seconds %d\n" % i
        assert gzip.decompress(reply) == one_member(reply)
    assert compressions == [HEAD]


def test_the_last_head_of_each_kind_is_kept(compressions: list[bytes]) -> None:
    other = HEAD.replace(b"web", b"db")
    equal = bytes(bytearray(HEAD))  # the same bytes, another object: a page made again

    async def main() -> GzipPages:
        pages = GzipPages()
        for head, kind in [(HEAD, "text"), (other, "openmetrics"), (HEAD, "text"),
                           (other, "text"), (HEAD, "text"), (equal, "text")]:  # fmt: skip
            assert one_member(await pages.gzipped(head, b"tail\n", kind)) == head + b"tail\n"
        return pages

    pages = asyncio.run(main())
    # HEAD kept while the other kind came; then each new head of a kind replaced the last
    assert [id(head) for head in compressions] == [id(HEAD), id(other), id(other), id(HEAD),
                                                    id(equal)]  # fmt: skip
    kept = {kind: head for kind, (head, _) in pages._heads.items()}
    assert kept.keys() == {"text", "openmetrics"}
    assert kept["text"] is equal
    assert kept["openmetrics"] is other


def test_requests_that_come_together_share_one_compression(compressions: list[bytes]) -> None:
    async def main() -> list[bytes]:
        pages = GzipPages()
        return await asyncio.gather(*(pages.gzipped(HEAD, b"%d\n" % i) for i in range(4)))

    for i, reply in enumerate(asyncio.run(main())):
        assert one_member(reply) == HEAD + b"%d\n" % i
    assert compressions == [HEAD]


def test_a_small_head_is_compressed_each_time_and_not_kept(compressions: list[bytes]) -> None:
    async def main() -> GzipPages:
        pages = GzipPages()
        for _ in range(2):
            assert one_member(await pages.gzipped(b"Unauthorized\n")) == b"Unauthorized\n"
        return pages

    pages = asyncio.run(main())
    assert len(compressions) == 2
    assert pages._heads == {}  # an error page cannot push a page's head out


def test_a_compression_that_failed_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compress._CompressedHead.of
    failures = [MemoryError("zlib")]

    def once_failing(head: bytes) -> compress._CompressedHead:
        if failures:
            raise failures.pop()
        return real(head)

    monkeypatch.setattr(compress._CompressedHead, "of", staticmethod(once_failing))

    async def main() -> bytes:
        pages = GzipPages()
        with pytest.raises(MemoryError):
            await pages.gzipped(HEAD, b"1\n")
        return await pages.gzipped(HEAD, b"2\n")

    assert one_member(asyncio.run(main())) == HEAD + b"2\n"
