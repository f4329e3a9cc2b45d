"""QEMU's monitor protocols: QMP (a sans-I/O session under an asyncio server) and HMP text.

:mod:`.jsonstream` reads bytes as QEMU's JSON streamer does, :mod:`.session` is the QMP
state machine (greeting, negotiation, dispatch), :mod:`.hmp` the human monitor,
:mod:`.monitor` binds them to a stats registry, :mod:`.server` puts them on sockets.
"""
