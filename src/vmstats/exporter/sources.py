"""The VMs ``vmstats exporter SOURCE...`` exports: the sockets its arguments name at each
scrape, each read by its :class:`QmpReader` (kept between scrapes for the replies it
decoded, and its connection where the socket is one of vmstats' own)."""

from __future__ import annotations

import logging

from vmstats.limits import RateLimitedLog
from vmstats.reader.reading import QmpReader, Reader, socket_addresses

log = logging.getLogger(__name__)


class SocketReaders:
    """Sockets and ``HOST:PORT`` as given, and the ``*.qmp`` sockets a directory holds now
    (a VM whose socket is gone is no longer exported; Prometheus marks its series
    stale)."""

    def __init__(self, sources: list[str], timeout: float) -> None:
        self.sources = sources
        self.timeout = timeout
        self._readers: dict[str, QmpReader] = {}
        self._log = RateLimitedLog(log)

    def __call__(self) -> list[Reader]:
        addresses = socket_addresses(self.sources)
        if not addresses:
            self._log.warning("empty", "no VM to export: %s hold(s) no *.qmp socket (yet)",
                              " ".join(self.sources))  # fmt: skip
        readers = {a: self._readers.get(a) or QmpReader(a, self.timeout) for a in addresses}
        for address, gone in self._readers.items():
            if address not in readers:
                gone.close()  # its socket went: so does a connection it kept
        self._readers = readers
        return list(readers.values())
