"""A small, generic re-implementation of QEMU's QAPI machinery.

QEMU declares its wire types once (``qapi/*.json``) and generates argument checking,
output encoding, dispatch and introspection from that declaration.  This package does the
same at import time: :mod:`.schema` reads a declaration, :mod:`.visitor` checks input with
QEMU's exact error texts, :mod:`.output` encodes with QEMU's key order, :mod:`.json`
writes bytes the way QEMU's JSON writer does and :mod:`.dispatch` runs a QMP request.
Nothing here knows about statistics; :mod:`vmstats.stats` declares those.
"""

from vmstats.qapi.errors import CommandNotFound, GenericError, QapiError

__all__ = ["CommandNotFound", "GenericError", "QapiError"]
