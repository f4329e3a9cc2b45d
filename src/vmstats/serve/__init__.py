"""``vmstats serve``: every VM on the host, read-only, without kicking a vCPU.

:mod:`.discover` finds VMMs and names them; :mod:`.daemon` serves each over a read-only
QMP socket of its own and follows its life.
"""
