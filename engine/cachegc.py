"""The build cache's garbage collection: what it holds, least-recently-used eviction, and prune.

The build cache is everything under the cache dir but the image store: CAS blobs, AC entries,
the OCI map (``oci/``), toolchain trees, the per-workspace indexes and stamps (``index/``), the
remote caches' notes, and temporaries. Blobs an image in the store needs are the images', never
the build cache's: neither eviction nor a prune without ``-a`` takes them.

Safety against builds running at the same time: every build holds a *shared* flock on
``<cache>/gc.lock`` for its whole session (``build.open_session`` to ``Session.close``), and so
does a family command that uses the cache's OCI blobs (``pbuild pull``, ``push``, ...). Whatever
removes anything from the build cache holds it *exclusive*: ``pbuild system prune`` waits for it
(and says so), the after-build eviction only tries and skips when anyone is busy. So no build
ever finds an input blob gone between the moment it checked it and the moment it reads it. What a
build may still meet is an entry evicted *before* it started (its AC memo, a stamp, pbuild-out
name it): the scheduler treats that as a miss, and the action runs again.

Last use: an AC entry's mtime, to the hour. A cache hit touches it (``LocalStore.touch_action``,
at most hourly per workspace); a new entry is written fresh; a no-op build, which opens no AC entry, touches its up-to-date stamp instead,
and a stamp's mtime counts as a use of every action key it lists. CAS blobs are never touched:
they are hard-linked into ``pbuild-out``, whose up-to-date stamps record their ctime. A
toolchain tree's use touches its lock file (its folder's mtime is in `pbuild run` stamps).
"""

from __future__ import annotations

import contextlib
import marshal
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from pbuild.engine.diskuse import Tally
from pbuild.engine.gclock import USAGE_FILE
from pbuild.engine.store import OCI_INDEX_DIR, ActionResult, LocalStore, blob_path
from pbuild.engine.toolchains import TREES_DIR
from pbuild.lib.digest import DigestError, content_digest, oci_hex
from pbuild.lib.oci.imagestore import IMAGES_DIR, StoredImage
from pbuild.tools.fstree import remove_tree

# The build cache's parts, as `pbuild system df -v` lists them (group names of the tally).
CAS, AC, OCI, TREES, INDEX, REMOTE, TMP, OTHER = "cas", "ac", "oci", "toolchains", "index", "remote", "tmp", "other"
PARTS = (CAS, AC, OCI, TREES, INDEX, REMOTE, TMP, OTHER)
#: Group prefix of a CAS blob (or OCI map entry) a stored image needs: ``imgblob:PATH``.
IMAGE_BLOB = "imgblob:"
_FOLDERS = {"cas": CAS, "ac": AC, OCI_INDEX_DIR: OCI, TREES_DIR: TREES, "index": INDEX, "remote": REMOTE,
            "sha256-index": REMOTE, "tmp": TMP}


def _not_cache(group: str) -> bool:
    """A group outside the build cache proper (an image's blob or layout, a layer, ...)."""
    return group not in PARTS


# -- what images need -----------------------------------------------------------------------------


def stored_images(cache_dir: str) -> list[StoredImage]:
    """The image store's images (none when it was never used)."""
    if not os.path.isdir(os.path.join(cache_dir, IMAGES_DIR)):
        return []
    from pbuild.engine.store import OciBlobs
    from pbuild.lib.oci.imagestore import ImageStore

    return ImageStore.at(cache_dir, OciBlobs(LocalStore(cache_dir))).images()


def read_oci_map(cache_dir: str) -> dict[str, str]:
    """OCI map entry path -> the CAS digest it names (damaged entries left out)."""
    folder = os.path.join(cache_dir, OCI_INDEX_DIR, "sha256")
    found: dict[str, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="ascii") as handle:
                found[path] = content_digest(handle.read().strip())
        except (OSError, UnicodeDecodeError, DigestError):
            continue
    return found


def image_blob_paths(cache_dir: str, images: Iterable[StoredImage], oci_map: dict[str, str]) -> set[str]:
    """The CAS files (and their OCI map entries) that ``images`` need."""
    store_cas = os.path.join(cache_dir, "cas")
    map_dir = os.path.join(cache_dir, OCI_INDEX_DIR, "sha256")
    needed: set[str] = set()
    for image in images:
        for digest in image.blobs:
            entry = os.path.join(map_dir, oci_hex(digest))
            cas = oci_map.get(entry)
            if cas is not None:
                needed.add(entry)
                needed.add(blob_path(store_cas, content_digest(cas), False))
    return needed


# -- the scan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One thing eviction may remove: an AC entry (with the blobs it names), an unreferenced
    blob, or a toolchain tree; ``last_use`` in seconds since the epoch."""

    kind: str  # "ac" | "blob" | "tree"
    path: str
    last_use: float
    blobs: tuple[str, ...] = ()


@dataclass
class CacheScan:
    """The build cache as found: every link tallied by part, and the items eviction ranks."""

    cache_dir: str
    tally: Tally
    items: list[Item]
    refs: dict[str, int]  # blob path -> AC entries naming it
    maps: dict[str, list[str]]  # blob path -> OCI map entries naming it
    sizes: dict[str, int]  # file path -> size
    image_needs: set[str]
    counts: dict[str, int] = field(default_factory=dict)  # part -> files

    def size(self) -> int:
        """Bytes of the build cache (images' blobs excluded), each inode once."""
        return self.tally.size(lambda g: g in PARTS, _not_cache)

    def reclaimable(self) -> int:
        """Bytes a prune of the build cache frees (blobs also linked elsewhere free nothing)."""
        return self.tally.freed(lambda g: g in PARTS and g != TMP)

    def part_size(self, part: str) -> int:
        return self.tally.size(lambda g: g == part, _not_cache)


def stamp_uses(cache_dir: str) -> dict[str, float]:
    """Action key -> the newest mtime of an up-to-date stamp listing it (a no-op build's use)."""
    folder = os.path.join(cache_dir, "index")
    uses: dict[str, float] = {}
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".stamp")]
    except OSError:
        return uses
    for name in names:
        path = os.path.join(folder, name)
        try:
            mtime = os.stat(path).st_mtime
            with open(path, "rb") as handle:
                record = marshal.loads(handle.read())  # from bytes: load(handle) reads value by value
            events = record[2]
            for _label, _mnemonic, key in events:
                if isinstance(key, str) and uses.get(key, 0.0) < mtime:
                    uses[key] = mtime
        except (OSError, ValueError, EOFError, TypeError, IndexError):
            continue  # a damaged stamp is discarded by its next build; it vouches for nothing
    return uses


def scan(cache_dir: str, images: Iterable[StoredImage] | None = None, tally: Tally | None = None) -> CacheScan:
    """Walk the build cache once: sizes by part, AC entries with their blobs and last use.

    ``tally`` (a new one when None) receives every link: the build cache's parts as groups,
    and each file a stored image needs as ``imgblob:PATH``."""
    images = stored_images(cache_dir) if images is None else images
    oci_map = read_oci_map(cache_dir)
    needs = image_blob_paths(cache_dir, images, oci_map)
    tally = Tally() if tally is None else tally
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    items: list[Item] = []
    refs: dict[str, int] = {}
    cas_dir = os.path.join(cache_dir, "cas")
    uses = stamp_uses(cache_dir)
    blob_mtime: dict[str, float] = {}
    try:
        top_names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        top_names = []
    for name in top_names:
        if name == IMAGES_DIR:
            continue
        part = _FOLDERS.get(name, OTHER)
        top = os.path.join(cache_dir, name)
        if part in (CAS, AC, OCI):
            for dirpath, _dirs, files in os.walk(top):
                for fname in files:
                    path = os.path.join(dirpath, fname)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if path in needs:
                        tally.add(path, st, IMAGE_BLOB + path)
                    else:
                        tally.add(path, st, part)
                        counts[part] = counts.get(part, 0) + 1
                    sizes[path] = st.st_size
                    if part == CAS:
                        blob_mtime[path] = st.st_mtime
                    elif part == AC and not fname.endswith(".tmp"):
                        blobs = _blobs_of(cas_dir, path)
                        items.append(Item("ac", path, max(st.st_mtime, uses.get(fname, 0.0)), blobs))
                        for blob in blobs:
                            refs[blob] = refs.get(blob, 0) + 1
        elif part == TREES:
            tally.add_tree(top, TREES)
            try:
                trees = os.listdir(top)
            except OSError:
                trees = []
            for tree in trees:
                path = os.path.join(top, tree)
                if os.path.isdir(path) and not os.path.islink(path) and "." not in tree:
                    try:
                        mtime = os.lstat(path).st_mtime
                    except OSError:
                        continue  # removed meanwhile
                    with contextlib.suppress(OSError):  # a use touches its lock file (toolchains.py)
                        mtime = max(mtime, os.lstat(path + ".lock").st_mtime)
                    counts[TREES] = counts.get(TREES, 0) + 1
                    items.append(Item("tree", path, mtime))
        else:
            tally.add_tree(top, part)
    for blob, mtime in blob_mtime.items():
        if blob not in refs and blob not in needs and not blob.endswith(".tmp"):
            items.append(Item("blob", blob, mtime))
    maps: dict[str, list[str]] = {}
    for entry, cas in oci_map.items():
        maps.setdefault(blob_path(cas_dir, content_digest(cas), False), []).append(entry)
    return CacheScan(cache_dir, tally, items, refs, maps, sizes, needs, counts)


def _blobs_of(cas_dir: str, entry: str) -> tuple[str, ...]:
    """The CAS paths an AC entry names (none when it is damaged: then it only costs its own bytes)."""
    try:
        with open(entry, "rb") as handle:
            result = ActionResult.from_json(handle.read())
    except (OSError, ValueError, KeyError, TypeError, DigestError):
        return ()
    paths = [blob_path(cas_dir, o.digest, o.executable) for o in result.outputs]
    if result.stdout:
        with contextlib.suppress(DigestError):
            paths.append(blob_path(cas_dir, content_digest(result.stdout), False))
    return tuple(sorted(set(paths)))


# -- removal -------------------------------------------------------------------------------------


class Remover:
    """Removes paths, tallying each link first, so that what it freed is counted honestly."""

    def __init__(self, cache_dir: str, gone: Tally | None = None) -> None:
        self.cache_dir = cache_dir
        self.gone = Tally() if gone is None else gone
        self.counts: dict[str, int] = {}

    def file(self, path: str, what: str) -> bool:
        try:
            st = os.lstat(path)
            os.unlink(path)
        except FileNotFoundError:
            return False
        self.gone.add(path, st, "gone")
        self.counts[what] = self.counts.get(what, 0) + 1
        return True

    def tree(self, path: str, what: str) -> bool:
        """A folder, renamed into ``tmp`` first so that it leaves its place in one step (a reader
        that finds it finds it whole; a remover killed halfway leaves a stale temporary)."""
        tmp = os.path.join(self.cache_dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        doomed = os.path.join(tmp, f"gc-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            os.rename(path, doomed)  # atomicio-exempt: a removal, out of its place to a fresh name
        except FileNotFoundError:
            return False
        self.gone.add_tree(doomed, "gone")
        remove_tree(doomed)
        self.counts[what] = self.counts.get(what, 0) + 1
        return True

    def freed(self) -> int:
        return self.gone.freed(lambda g: g == "gone")


def remove_tree_unless_held(remover: Remover, path: str) -> bool:
    """Remove a toolchain tree (or an unpacker's leftover) unless its ``.lock`` is held: the
    unpacker holds it exclusive, and a program started on the tree may hold it shared for its
    life. The caller holds the exclusive gc lock, so no build waits on that lock file."""
    from pbuild.engine.toolchains import try_lock

    lock_path = path + ".lock"
    lock = try_lock(lock_path)
    if lock is None:
        return False
    with lock:
        removed = remover.tree(path, "toolchain trees")
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        return removed


@dataclass(frozen=True)
class Eviction:
    """What one eviction did."""

    size_before: int
    size_after: int
    freed: int  # bytes of disk freed (less than size_before - size_after when pbuild-out links blobs)
    counts: dict[str, int]
    over_budget: bool  # still over: what is protected (the last build's entries) alone is more


def evict(found: CacheScan, max_size: int, *, protect_since: float, protect: Collection[str] = ()) -> Eviction:
    """Remove least-recently-used items until the build cache is at most ``max_size`` bytes.

    An AC entry goes with the blobs that no remaining entry names and no stored image needs
    (with their OCI map entries); unreferenced blobs and toolchain trees are ranked by their own
    mtime. Items used at or after ``protect_since``, and the AC entries whose keys are in
    ``protect`` (what the build that just ran used), are kept, even over the budget: evicting
    them would only make the next build redo its work. The caller holds the
    exclusive gc lock (:func:`pbuild.engine.gclock.try_exclusive`).
    """
    size = before = found.size()
    remover = Remover(found.cache_dir)
    refs = dict(found.refs)
    for item in sorted(found.items, key=lambda i: (i.last_use, i.path)):
        if size <= max_size:
            break
        if item.last_use >= protect_since or (item.kind == "ac" and os.path.basename(item.path) in protect):
            continue
        if item.kind == "tree":
            tree_size = Tally()
            tree_size.add_tree(item.path, TREES)
            if remove_tree_unless_held(remover, item.path):
                size -= tree_size.size()
            continue
        if item.kind == "ac":
            if remover.file(item.path, "action cache entries"):
                size -= found.sizes.get(item.path, 0)
            doomed = []
            for blob in item.blobs:
                refs[blob] -= 1
                if refs[blob] == 0 and blob not in found.image_needs:
                    doomed.append(blob)
        else:
            doomed = [item.path]
        for blob in doomed:
            if remover.file(blob, "blobs"):
                size -= found.sizes.get(blob, 0)
            for entry in found.maps.get(blob, ()):
                if remover.file(entry, "OCI map entries"):
                    size -= found.sizes.get(entry, 0)
    return Eviction(before, size, remover.freed(), remover.counts, size > max_size)


def prune(found: CacheScan, gone: Tally | None = None) -> Remover:
    """Remove the whole build cache but the blobs stored images need (the caller holds the
    exclusive lock): AC entries, blobs, the OCI map, toolchain trees, indexes and stamps, the
    remote caches' notes, temporaries of builds that are gone."""
    cache_dir = found.cache_dir
    remover = Remover(cache_dir, gone)
    for folder, what in (("ac", "action cache entries"), ("cas", "blobs"), (OCI_INDEX_DIR, "OCI map entries")):
        for dirpath, _dirs, files in os.walk(os.path.join(cache_dir, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if path not in found.image_needs:
                    remover.file(path, what)
    trees = os.path.join(cache_dir, TREES_DIR)
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(trees)):
            path = os.path.join(trees, name)
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree_unless_held(remover, path)
    for name, what in (("index", "indexes"), ("remote", "remote notes")):
        if os.path.isdir(os.path.join(cache_dir, name)):
            remover.tree(os.path.join(cache_dir, name), what)
    for name in ("sha256-index", USAGE_FILE):
        remover.file(os.path.join(cache_dir, name), "indexes")
    LocalStore(cache_dir).remove_stale_tmp()
    return remover
