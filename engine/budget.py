"""The build cache's size budget: ``[cache] max_size``, and its enforcement after a build.

``max_size = "20G"`` (K, M, G, T: powers of 1024; or a whole number of bytes) may be set in
``WORKSPACE.toml`` and in the user config (``$XDG_CONFIG_HOME/pbuild/config.toml``). Both are
ceilings on one cache that every workspace of the user shares, so when both are set the smaller
one is enforced: that is the only choice that breaks neither (a workspace cannot raise the
user's limit for the disk, and the user's generous default does not undo a project's tighter
one). ``pbuild system df`` shows the budget in force and where it comes from.

Enforcement must cost a build next to nothing. ``<cache>/gc.usage`` holds the size last measured
and the bytes builds wrote into the CAS and the AC since (``LocalStore.bytes_added``); a build
adds its own, and only when that estimate exceeds the budget is the cache measured (and evicted,
least recently used first, :func:`pbuild.engine.cachegc.evict`). A no-op build never gets here:
it opens no session. Eviction needs the exclusive gc lock; when another build holds it shared,
this build leaves the estimate over budget and the next build to finish tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

from pbuild.engine.errors import Location, PbuildError
from pbuild.engine.workspace import WORKSPACE_FILE, Workspace, user_config_path

_HINT = 'use a size with K, M, G or T (powers of 1024), e.g. max_size = "20G"'


class Budget(NamedTuple):
    """The size the build cache is held to, and the config line that sets it (a NamedTuple:
    every build imports this module, and a dataclass costs more to define)."""

    max_size: int
    source: str  # "WORKSPACE.toml:3" or the user config's path:line


def read_budget(workspace: Workspace | None) -> Budget | None:
    """The budget in force: the smaller of the workspace's and the user's ``[cache] max_size``.

    A bad value is an input error naming its file and line (exit 2)."""
    from pbuild.lib.tomlpos import load_toml

    found: list[Budget] = []
    if workspace is not None:
        budget = _from_config(workspace.config, WORKSPACE_FILE, workspace.path(WORKSPACE_FILE))
        if budget is not None:
            found.append(budget)
    user_path = user_config_path()
    try:
        with open(user_path, "rb") as handle:
            user_text = handle.read()
    except OSError:
        user_text = None
    if user_text is not None:
        import tomllib

        try:
            user_config = load_toml(user_text)
        except tomllib.TOMLDecodeError as exc:
            raise PbuildError(f"invalid TOML in {user_path}: {exc}", hint="fix or remove the user config file") from None
        budget = _from_config(user_config, user_path, user_path)
        if budget is not None:
            found.append(budget)
    return min(found, key=lambda b: b.max_size) if found else None


def _from_config(config: Mapping[str, Any], shown: str, path: str) -> Budget | None:
    section = config.get("cache")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise PbuildError("[cache] must be a table", location=_where(shown, path, None),
                          hint='a [cache] table, with max_size = "20G" on the line below')
    unknown = sorted(set(section) - {"max_size"})
    if unknown:
        raise PbuildError(f"unknown key cache.{unknown[0]}", location=_where(shown, path, unknown[0]),
                          hint="[cache] knows max_size")
    if "max_size" not in section:
        return None
    from pbuild.lib.sizes import parse_size

    value = section["max_size"]
    size = parse_size(value)
    where = _where(shown, path, "max_size")
    if size is None:
        raise PbuildError(f"cache.max_size {value!r} is not a size", location=where, hint=_HINT)
    return Budget(size, str(where))


def _where(shown: str, path: str, key: str | None) -> Location:
    """The line of ``[cache]``'s ``key`` (or of the table) in the file at ``path``."""
    from pbuild.lib.tomlpos import table_positions

    try:
        with open(path, encoding="utf-8") as handle:
            tables, keys = table_positions(handle.read())
    except (OSError, UnicodeDecodeError):
        return Location(shown)
    line = keys.get(("cache", key)) if key else None
    return Location(shown, line or tables.get("cache") or keys.get(("", "cache")))


# -- the usage estimate ----------------------------------------------------------------------


def _usage_path(cache_dir: str) -> str:
    from pbuild.engine.gclock import USAGE_FILE  # light: this runs after every build with a budget

    return os.path.join(cache_dir, USAGE_FILE)


def add_usage(cache_dir: str, added: int) -> int | None:
    """Add ``added`` bytes to the estimate; return it, or None when it is unknown (never
    measured, or damaged). Read, changed and written under a flock of the file itself, so two
    builds finishing at once both count."""
    fd = os.open(_usage_path(cache_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.read(fd, 200).decode("ascii", "replace").split()
        try:
            measured, since = int(text[0]), int(text[1])
        except (IndexError, ValueError):
            return None
        if added:
            since += added
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{measured} {since}\n".encode())
        return measured + since
    finally:
        os.close(fd)


def set_usage(cache_dir: str, measured: int) -> None:
    """A fresh measurement: the estimate starts again from it."""
    fd = os.open(_usage_path(cache_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{measured} 0\n".encode())
    finally:
        os.close(fd)


def after_build(cache_dir: str, budget: Budget, added: int, started: float, say: Callable[[str], None],
                used: Collection[str] = ()) -> None:
    """Hold the build cache to ``budget`` after a build that started at ``started``, wrote
    ``added`` bytes and used the AC entries ``used`` (kept; the caller no longer holds its
    shared lock). Never fails the build: a problem is said and left for the next build or
    `pbuild system prune`."""
    try:
        estimate = add_usage(cache_dir, added)
        if estimate is not None and estimate <= budget.max_size:
            return  # the common case: nothing more is imported or read
        from pbuild.engine import cachegc, gclock

        lock = gclock.try_exclusive(cache_dir)
        if lock is None:
            return  # another build or a prune is at work: the next build to finish tries again
        with lock:
            found = cachegc.scan(cache_dir)
            if found.size() <= budget.max_size:
                set_usage(cache_dir, found.size())
                return
            # Items used by this build are kept; a second of slack covers coarse file timestamps.
            done = cachegc.evict(found, budget.max_size, protect_since=started - 1.0, protect=used)
            set_usage(cache_dir, done.size_after)
    except OSError as exc:
        with contextlib.suppress(Exception):
            say(f"pbuild: warning: the cache's size budget was not enforced: {exc}")
        return
    from pbuild.lib.sizes import format_size

    removed = ", ".join(f"{n} {what}" for what, n in sorted(done.counts.items())) or "nothing"
    text = (f"pbuild: the build cache was over its budget ({format_size(done.size_before)} > "
            f"{format_size(budget.max_size)}, {budget.source}): evicted {removed}, "
            f"now {format_size(done.size_after)}, {format_size(done.freed)} freed on disk")
    if done.over_budget:
        text += "; still over: the last build's own entries are kept"
    say(text)
