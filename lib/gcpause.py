"""Holding off Python's cycle collector while a command builds a large object graph.

Loading and analysis allocate millions of long-lived objects (declarations, labels, files,
actions) and free almost none. CPython's collector counts allocations, not garbage: every few
hundred thousand it walks the whole older generation, so a graph of N targets costs O(N) walks
of O(N) objects. On the 100,000-target benchmark workspace that was a third of loading and
analysis (bench/bench_scale.py). The graph holds few cycles that become garbage, so nothing is
gained by collecting while it is built.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cycle collector inside the block, restoring its previous state after.

    Nested blocks and a collector already off are left as they are. Reference counting still
    frees what is not in a cycle; cycles made meanwhile are found by the next collection after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
