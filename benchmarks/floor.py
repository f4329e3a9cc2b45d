"""The floor: a trivial asyncio server that answers every read with one fixed line.

What a round trip over a unix socket costs on this machine with asyncio and our raw
client, and nothing else; every figure of bench.py is read against it.
Run by bench.py as ``python benchmarks/floor.py SOCKET`` (it prints "ready").
"""

from __future__ import annotations

import asyncio
import sys

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 0}}, "capabilities": []}}\r\n'
)
REPLY = b'{"return": {}}\r\n'


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.transport.write(REPLY)


async def main(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(Echo, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
