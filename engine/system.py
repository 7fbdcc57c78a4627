"""``pbuild system df`` and ``pbuild system prune``: the disk pbuild uses, and getting it back.

Four kinds, as Docker counts them: the build cache (:mod:`pbuild.engine.cachegc`), the layer
store (the launcher's unpacked layers), the image store (pulled and loaded images), and the
containers (their state folders: upper layers, flattened copies, logs). Every link is tallied
once in one :class:`pbuild.engine.diskuse.Tally`, so a blob an image layout and the CAS share
is counted once (under images), and what a prune would free is what has no link left outside.

Prune order and locks: the layer store's lock, exclusive, for containers, layers and images (a
launcher holds it shared from before it reads an image until its container runs with its layers
recorded), then the build cache under the cache's gc lock, exclusive (every build holds it
shared). Both wait, and say so, while someone holds them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from pbuild.engine import cachegc, gclock
from pbuild.engine.budget import Budget, read_budget, set_usage
from pbuild.engine.diskuse import Tally
from pbuild.engine.errors import PbuildError
from pbuild.lib.digest import OciDigest
from pbuild.lib.oci.imagestore import IMAGES_DIR, StoredImage
from pbuild.lib.sizes import format_size
from pbuild.tools.launcher import layerstore
from pbuild.tools.launcher.state import ContainerState, ContainerStore

if TYPE_CHECKING:
    from pbuild.engine.workspace import Workspace


@dataclass(frozen=True)
class Row:
    """One line of ``system df``: a kind, how many things, how many in use, size, reclaimable."""

    kind: str
    total: int
    active: int | None
    size: int
    reclaimable: int


@dataclass(frozen=True)
class Detail:
    """One thing of a kind, for ``system df -v``."""

    kind: str
    name: str
    size: int
    state: str  # "running", "unused", "in use by 2 containers", a build cache part's file count


@dataclass
class Survey:
    """Everything df reports, found in one pass."""

    rows: list[Row]
    details: list[Detail]
    budget: Budget | None
    cache_size: int


def container_layers(store: ContainerStore, state: ContainerState, by_path: dict[str, str]) -> set[str]:
    """The diff_ids a container uses: its record's, else (a record of an older pbuild) its
    ``l/N`` links to the layer store."""
    recorded = state.extra.get("layers")
    if isinstance(recorded, list):
        return {str(d) for d in recorded}
    links = os.path.join(store.container_dir(state.id), "l")
    found: set[str] = set()
    try:
        names = os.listdir(links)
    except OSError:
        return found
    for name in names:
        try:
            target = os.path.normpath(os.readlink(os.path.join(links, name)))
        except OSError:
            continue
        if target in by_path:
            found.add(by_path[target])
    return found


def _running(states: Sequence[ContainerState]) -> list[ContainerState]:
    return [s for s in states if s.status == "running"]


def survey(cache_dir: str, workspace: Workspace | None) -> Survey:
    """Measure the four kinds (nothing is changed, no lock is taken: a snapshot)."""
    budget = read_budget(workspace)
    tally = Tally()
    details: list[Detail] = []
    store = ContainerStore()
    states = store.all()
    layers_root = layerstore.store_root()
    layers = layerstore.stored_layers(layers_root)
    by_path = {os.path.normpath(p): d for d, p in layers.items()}
    running = _running(states)
    running_ids = {s.id for s in running}
    used_layers: dict[str, int] = {}
    for state in running:
        for diff_id in container_layers(store, state, by_path):
            used_layers[diff_id] = used_layers.get(diff_id, 0) + 1

    for state in states:
        tally.add_tree(store.container_dir(state.id), "ctr:" + state.id)
    for diff_id, path in layers.items():
        tally.add_tree(path, "layer:" + diff_id)
    images = cachegc.stored_images(cache_dir)
    image_users = _image_users(states)
    images_root = os.path.join(cache_dir, IMAGES_DIR)
    for image in images:
        tally.add_tree(_image_folder(image), "img:" + image.digest)
    tally.add_tree(images_root, "img-meta", skip=[_image_folder(i) for i in images])
    found = cachegc.scan(cache_dir, images, tally)

    # Images' CAS blobs: those only images no running container uses would go with prune -a.
    running_digests = {d for s in running for d in _image_of(s)}
    unused_images = [i for i in images if i.digest not in running_digests]
    oci_map = cachegc.read_oci_map(cache_dir)
    kept = cachegc.image_blob_paths(cache_dir, [i for i in images if i.digest in running_digests], oci_map)
    unused_groups = {"img:" + i.digest for i in unused_images}
    unused_groups |= {cachegc.IMAGE_BLOB + p for p in found.image_needs - kept}

    def image_group(g: str) -> bool:
        return g.startswith(("img:", "img-meta", cachegc.IMAGE_BLOB))

    rows = [
        Row("Images", len(images), sum(1 for i in images if image_users.get(i.digest)),
            tally.size(image_group), tally.freed(lambda g: g in unused_groups)),
        Row("Containers", len(states), len(running), tally.size(lambda g: g.startswith("ctr:")),
            tally.freed(lambda g: g.startswith("ctr:") and g[4:] not in running_ids)),
        Row("Layers", len(layers), len(used_layers), tally.size(lambda g: g.startswith("layer:")),
            tally.freed(lambda g: g.startswith("layer:") and g[6:] not in used_layers)),
        Row("Build cache", found.counts.get(cachegc.AC, 0), None, found.size(), found.reclaimable()),
    ]
    for image in images:
        users = image_users.get(image.digest, 0)
        details.append(Detail("image", f"{image.digest[7:19]} {', '.join(image.names) or '<none>'}",
                              tally.size(_only("img:" + image.digest)),
                              f"in use by {users} container(s)" if users else
                              ("dangling" if not image.names else "unused")))
    for state in states:
        details.append(Detail("container", f"{state.short_id} {state.name}",
                              tally.size(_only("ctr:" + state.id)), state.status))
    for diff_id in sorted(layers):
        users = used_layers.get(diff_id, 0)
        details.append(Detail("layer", diff_id[:19], tally.size(_only("layer:" + diff_id)),
                              f"used by {users} running container(s)" if users else "unused"))
    for part in cachegc.PARTS:
        size = found.part_size(part)
        if size or found.counts.get(part):
            count = found.counts.get(part)
            files = "" if count is None else f"{count} file" + ("" if count == 1 else "s")
            details.append(Detail("build cache", part, size, files))
    return Survey(rows, details, budget, found.size())


def _image_folder(image: StoredImage) -> str:
    """The folder of one stored image: its layout and what the store keeps beside it."""
    return os.path.dirname(os.path.normpath(image.layout))


def _only(group: str) -> Callable[[str], bool]:
    return lambda g: g == group


def _image_of(state: ContainerState) -> list[OciDigest]:
    digest = state.extra.get("image_digest")
    return [OciDigest(digest)] if isinstance(digest, str) and digest else []


def _image_users(states: Sequence[ContainerState]) -> dict[str, int]:
    users: dict[str, int] = {}
    for state in states:
        for digest in _image_of(state):
            users[digest] = users.get(digest, 0) + 1
    return users


def df_command(cache_dir: str, workspace: Workspace | None, *, fmt: str, verbose: bool,
               out: Callable[[str], None] = print) -> int:
    """``pbuild system df [--format json] [-v]``."""
    found = survey(cache_dir, workspace)
    if fmt == "json":
        doc: dict[str, object] = {"kinds": [asdict(r) for r in found.rows]}
        if verbose:
            doc["items"] = [asdict(d) for d in found.details]
        doc["budget"] = None if found.budget is None else {
            "max_size": found.budget.max_size, "source": found.budget.source, "build_cache": found.cache_size}
        out(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    table = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE")]
    for row in found.rows:
        share = f" ({100 * row.reclaimable // row.size}%)" if row.size else ""
        table.append((row.kind, str(row.total), "-" if row.active is None else str(row.active),
                      format_size(row.size), format_size(row.reclaimable) + share))
    _print_table(table, out)
    if found.budget is not None:
        out(f"\nBuild cache budget: {format_size(found.budget.max_size)} ({found.budget.source}), "
            f"{format_size(found.cache_size)} used")
    if verbose:
        for kind in ("image", "container", "layer", "build cache"):
            rows = [d for d in found.details if d.kind == kind]
            if not rows:
                continue
            out(f"\n{kind.capitalize()}s:" if kind != "build cache" else "\nBuild cache:")
            _print_table([("NAME", "SIZE", "STATE"), *((d.name, format_size(d.size), d.state) for d in rows)], out)
    return 0


def _print_table(rows: Sequence[Sequence[str]], out: Callable[[str], None]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- prune -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    """What a prune removed, and the bytes it freed (inodes whose last link it removed)."""

    containers: tuple[str, ...]
    layers: tuple[str, ...]
    untagged: tuple[str, ...]
    images: tuple[str, ...]
    cache: dict[str, int]
    freed: int


def prune(cache_dir: str, *, all_images: bool, say: Callable[[str], None]) -> Pruned:
    """Remove stopped containers, layers no running container uses, dangling images (with
    ``all_images``, every image no running container uses) and the build cache."""
    from pbuild.tools.launcher.lifecycle import remove_container

    gone = Tally()
    layers_root = layerstore.store_root()
    removed_containers: list[str] = []
    removed_layers: list[str] = []
    untagged: tuple[str, ...] = ()
    removed_images: tuple[str, ...] = ()
    with layerstore.lock_store(layers_root, exclusive=True, on_wait=lambda: say(
            "pbuild: containers are starting (they hold the layer store's lock); waiting for them")):
        store = ContainerStore()
        for state in store.all():
            if state.status == "running":
                continue
            gone.add_tree(store.container_dir(state.id), "gone")
            remove_container(store, state)
            removed_containers.append(state.id)
        remaining = store.all()  # running ones (none starts while we hold the lock)
        layers = layerstore.stored_layers(layers_root)
        by_path = {os.path.normpath(p): d for d, p in layers.items()}
        used: set[str] = set()
        for state in remaining:
            used |= container_layers(store, state, by_path)
        for diff_id, path in sorted(layers.items()):
            if diff_id in used:
                continue
            gone.add_tree(path, "gone")
            layerstore.remove_layer(layers_root, diff_id)
            removed_layers.append(diff_id)
        images = cachegc.stored_images(cache_dir)
        in_use = _image_users(remaining)
        doomed = [i for i in images if not in_use.get(i.digest) and (all_images or not i.names)]
        if doomed:
            untagged, removed_images = _remove_images(cache_dir, doomed, remaining, gone)
    with gclock.wait_exclusive(cache_dir, say):
        # One tally for all removals: an image's layout link and its CAS link together free its blob.
        remover = cachegc.prune(cachegc.scan(cache_dir), gone)
        set_usage(cache_dir, cachegc.scan(cache_dir).size())
    return Pruned(tuple(removed_containers), tuple(removed_layers), untagged, removed_images,
                  dict(remover.counts), gone.freed(lambda g: g == "gone"))


def _remove_images(cache_dir: str, doomed: Sequence[StoredImage], remaining: Sequence[ContainerState],
                   gone: Tally) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from pbuild.engine.store import LocalStore, OciBlobs
    from pbuild.lib.oci.imagestore import ImageStore

    images = ImageStore.at(cache_dir, OciBlobs(LocalStore(cache_dir)))
    for image in doomed:
        gone.add_tree(_image_folder(image), "gone")

    def users(digest: OciDigest) -> list[str]:
        return [s.name for s in remaining if digest in _image_of(s)]

    removal = images.remove([i.digest for i in doomed], force=False, users=users)
    return tuple(removal.untagged), tuple(removal.deleted)


def prune_command(cache_dir: str, *, all_images: bool, force: bool,
                  stdin_isatty: Callable[[], bool] = lambda: sys.stdin.isatty(),
                  out: Callable[[str], None] = print) -> int:
    """``pbuild system prune [-a] [-f]``: ask (unless ``-f``), prune, say what went."""
    images_line = ("all images without a running container using them" if all_images
                   else "all dangling images (no name left)")
    warning = ("WARNING! This will remove:\n"
               "  - all stopped containers\n"
               "  - all layers not used by a running container\n"
               f"  - {images_line}\n"
               "  - the build cache (action cache, blobs no kept image needs, toolchain trees, indexes)")
    if not force:
        if not stdin_isatty():
            raise PbuildError("pbuild system prune asks before it removes anything, and stdin is not a terminal",
                              hint="pass -f (--force) to prune without asking")
        out(warning)
        sys.stdout.write("Are you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            out("Nothing removed.")
            return 0

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    done = prune(cache_dir, all_images=all_images, say=say)
    if done.containers:
        out("Deleted containers:")
        for cid in done.containers:
            out(f"  {cid}")
    if done.layers:
        out("Deleted layers:")
        for diff_id in done.layers:
            out(f"  {diff_id}")
    if done.untagged or done.images:
        out("Deleted images:")
        for name in done.untagged:
            out(f"  untagged: {name}")
        for digest in done.images:
            out(f"  deleted: {digest}")
    if done.cache:
        out("Deleted build cache: " + ", ".join(f"{n} {what}" for what, n in sorted(done.cache.items())))
    out(f"Total reclaimed space: {format_size(done.freed)}")
    return 0
