"""The build cache's lock, ``<cache>/gc.lock``: shared by every build session and cache user,
exclusive for whatever removes from the build cache (see :mod:`pbuild.engine.cachegc`).

Its own small module: every build takes it, and the build's path imports nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pbuild.lib import filelock

GC_LOCK = "gc.lock"
#: The last measured size of the build cache and what builds added since (``budget.py``).
USAGE_FILE = "gc.usage"


def lock_shared(cache_dir: str, say: Callable[[str], None] | None = None) -> filelock.FileLock:
    """A build's (or a cache user's) hold on the cache: no eviction or prune while it lasts."""
    os.makedirs(cache_dir, exist_ok=True)
    lock = filelock.acquire(os.path.join(cache_dir, GC_LOCK), exclusive=False, on_wait=None if say is None else (
        lambda: say("pbuild: waiting for the cache's garbage collection (pbuild system prune) to finish")))
    return lock


def wait_exclusive(cache_dir: str, say: Callable[[str], None]) -> filelock.FileLock:
    """The cleaner's hold (no build runs while it lasts), waiting for builds to finish."""
    os.makedirs(cache_dir, exist_ok=True)
    lock = filelock.acquire(os.path.join(cache_dir, GC_LOCK), exclusive=True, on_wait=lambda: say(
        "pbuild: builds are running (they hold the cache's gc.lock); waiting for them to finish"))
    return lock


def try_exclusive(cache_dir: str) -> filelock.FileLock | None:
    """The cleaner's hold if nobody uses the cache right now, else None."""
    return filelock.try_acquire(os.path.join(cache_dir, GC_LOCK), exclusive=True)
