"""The human monitor (HMP), text byte-identical to QEMU 7.2's for the same data.

:mod:`.args` parses arguments as QEMU does (strings, expressions), :mod:`.monitor` holds
the command table and runs one command line, :mod:`.info_stats` prints ``info stats``.
"""

from vmstats.qmp.hmp.monitor import HMPCall, HumanMonitor

__all__ = ["HMPCall", "HumanMonitor"]
