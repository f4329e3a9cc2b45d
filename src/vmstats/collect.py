"""When Python's cyclic garbage collector may run.

The collector runs after every few hundred allocations, and each run of an old
generation walks every object that lives on.  A burst that makes thousands of objects
meant to stay (a first scan of 256 VMs: 2,048 vCPUs served) pays for walks that find
nothing: 40 to 110 ms of a 300 ms first scan here.  Such a burst holds collections off;
what it leaves behind is collected at the next run after it, once.

What a burst made to stay (the VMs it served) can be kept out of every later walk:
frozen, until some of it may be garbage (a VM removed).  The run after a first scan of
256 VMs walked its 47,000 objects for nothing (4 to 20 ms), and every full run walked
them again while they were served (26 to 117 ms during scrapes).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collections_held() -> Iterator[None]:
    """No automatic collection inside (a synchronous burst: other tasks that run while
    it awaits would go without collections too)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_let_go = False  # kept objects were let go since the last keep_all


def keep_all() -> None:
    """What lives now is meant to stay: no collection walks it until :func:`let_go`.
    Called at the end of a burst, while collections are held (before one walks it).
    Garbage cycles that live now would wait for :func:`let_go` too: those of what was
    let go since the last call are collected first (a full collection), so only a burst
    that made much should call it (a host's first scan, many VMs starting)."""
    global _let_go
    if _let_go:
        gc.collect()
        _let_go = False
    gc.freeze()


def let_go() -> None:
    """What was kept may hold garbage now (a VM removed): the next full collection walks
    it again, and frees what is garbage."""
    global _let_go
    gc.unfreeze()
    _let_go = True
