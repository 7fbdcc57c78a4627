"""The image store's commands: ``pbuild pull``, ``images``, ``rmi``, ``tag``, ``save``, ``load``.

The store is :class:`pbuild.lib.oci.imagestore.ImageStore` under the command's cache dir, its
blobs in the engine's CAS (``ctx.oci_blobs()``); no workspace is needed except to list, tag or
save built image targets. Registered in :mod:`pbuild.rules.oci.commands`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence

from pbuild.engine.api import OUT_DIR, BuiltTarget, CommandContext, PbuildError
from pbuild.engine.errors import WorkspaceError
from pbuild.lib.digest import OciDigest, oci_hex
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.imagestore import ImageStore, StoredImage, describe
from pbuild.lib.oci.reference import Reference
from pbuild.lib.sizes import format_size


def store_of(ctx: CommandContext) -> ImageStore:
    """The image store of the command's cache dir."""
    return ImageStore.at(ctx.cache_dir(), ctx.oci_blobs())


def _is_label(text: str) -> bool:
    return text.startswith(("//", ":", "@"))


def container_users(digest: OciDigest) -> list[str]:
    """The containers (any state) whose image is ``digest``, by name."""
    from pbuild.tools.launcher.state import ContainerStore

    return [state.name for state in ContainerStore().all() if state.extra.get("image_digest") == digest]


# -- pull ---------------------------------------------------------------------------------------


def pull(ctx: CommandContext) -> int:
    """``pbuild pull REF``: the image (the host's platform from an index) into the store."""
    from pbuild.lib.oci.registry.pull import host_platform_name, parse_pull_reference, pull_image

    ref = parse_pull_reference(ctx.args.reference)
    platform = ctx.args.platform or host_platform_name()
    store = store_of(ctx)
    name = str(Reference(ref.registry, ref.repository, ref.tag)) if ref.tag else str(ref)
    with store.scratch() as work:
        report = pull_image(str(ref), os.path.join(work, "oci"), plain_http=ctx.args.plain_http, blobs=store.blobs,
                            platform=platform, pinned=False)
        image = store.add_layout(os.path.join(work, "oci"), [name], f"pull {ref}", from_blob_store=True)
    ctx.out(f"pulled {name}")
    ctx.out(f"  digest {image.digest} ({platform}), {report.blobs_downloaded} blob(s) downloaded "
            f"({report.bytes_downloaded:,} bytes), {report.blobs_cached} from the cache")
    return 0


# -- images -------------------------------------------------------------------------------------


def _ago(created: float) -> str:
    seconds = max(0, int(time.time() - created))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "less than a minute ago" if seconds >= 1 else "now"


def _built_images(ctx: CommandContext) -> list[dict[str, object]]:
    """Every ``pbuild-out/**/digest`` beside an ``oci/`` layout of the workspace, if in one."""
    try:
        top = os.path.join(ctx.workspace_root(), OUT_DIR)
    except WorkspaceError as exc:
        if ctx.args.workspace is not None or exc.location is not None:
            raise
        return []  # outside a workspace: the store's images only
    rows: list[dict[str, object]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        if "digest" in filenames and os.path.isdir(os.path.join(dirpath, "oci")):
            package, _, name = os.path.relpath(dirpath, top).rpartition("/")
            with open(os.path.join(dirpath, "digest"), encoding="utf-8") as handle:
                digest = handle.read().strip()
            size, tags = _layout_size_and_tags(os.path.join(dirpath, "oci"), digest)
            rows.append({"target": f"//{package}:{name}", "id": digest, "names": tags, "size": size,
                         "layout": os.path.join(dirpath, "oci"),
                         "created": os.stat(os.path.join(dirpath, "digest")).st_mtime})
    return rows


def _layout_size_and_tags(layout: str, digest: str) -> tuple[int, list[str]]:
    """Bytes of the image ``digest`` in ``layout`` (manifest, config, layers) and its tags."""
    from pbuild.lib.errors import UserError

    try:
        entries = oci_layout.read_index(layout)
        named = [e for e in entries if e.blob.digest == digest]
        if not named:
            return 0, []
        top = oci_layout.read_document(named[0].blob)
        size = named[0].blob.size
        # An image index (a multi-platform image): the sum over its platforms' manifests.
        manifests = [oci_layout.read_document(oci_layout.descriptor(m, "image manifest", layout, "the index"))
                     for m in top.get("manifests", []) if "artifactType" not in m] \
            if named[0].blob.descriptor.media_type in mediatypes.INDEX_TYPES else [top]
        for manifest in manifests:
            size += int(manifest.get("config", {}).get("size", 0))
            size += sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        return size, [e.ref_name for e in entries if e.ref_name]
    except (UserError, ValueError, TypeError, AttributeError):
        return 0, []


def _split(name: str) -> tuple[str, str]:
    ref = Reference.parse(name)
    return f"{ref.registry}/{ref.repository}", ref.tag or "<none>"


def list_images(ctx: CommandContext) -> int:
    """``pbuild images``: built image targets of the workspace, then the store's images."""
    built = _built_images(ctx)
    stored = store_of(ctx).images()
    if not ctx.args.all:
        stored = [image for image in stored if image.names]
    if ctx.args.format == "json":
        doc = {"built": built, "stored": [describe(image) for image in stored]}
        ctx.out(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    def shown(digest: str) -> str:
        return digest if ctx.args.no_trunc else oci_hex(OciDigest(digest))[:12]

    rows = []
    for target in built:
        tags = [str(t) for t in target["names"]] if isinstance(target["names"], list) else []
        rows.append((str(target["target"]), ",".join(tags) or "<none>", shown(str(target["id"])), "built",
                     format_size(int(str(target["size"])))))
    for image in stored:
        for repository, tag in [_split(n) for n in image.names] or [("<none>", "<none>")]:
            rows.append((repository, tag, shown(image.digest), _ago(image.created), format_size(image.size)))
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_HEADER)]
    for row in [_HEADER, *rows]:
        ctx.out("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


_HEADER = ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")


# -- rmi, tag -----------------------------------------------------------------------------------


def rmi(ctx: CommandContext) -> int:
    """``pbuild rmi [-f] REF|ID...``: untag names, delete images no name holds any more."""
    removal = store_of(ctx).remove(ctx.args.images, force=ctx.args.force, users=container_users)
    for name in removal.untagged:
        ctx.out(f"Untagged: {name}")
    for digest in removal.deleted:
        ctx.out(f"Deleted: {digest}")
    return 0


def _built_image(ctx: CommandContext, target: str) -> tuple[BuiltTarget, str]:
    from pbuild.rules.oci.providers import ImageInfo

    built = ctx.build_one(target)
    image = built.providers.get(ImageInfo)
    if image is None:
        raise PbuildError(f"{built.label} is not an image", label=built.label,
                          hint="name an image target (an oci_image) or an image of `pbuild images`")
    return built, built.path(image.layout)


def tag(ctx: CommandContext) -> int:
    """``pbuild tag SRC DST``: name a stored image (or a built image target, stored first) DST."""
    store = store_of(ctx)
    if _is_label(ctx.args.source):
        built, layout = _built_image(ctx, ctx.args.source)
        image = store.add_layout(layout, [ctx.args.target], f"build {built.label}")
    else:
        image = store.tag(ctx.args.source, ctx.args.target)
    ctx.out(f"tagged {image.short_id} as {Reference.parse(ctx.args.target)}")
    return 0


# -- save, load ---------------------------------------------------------------------------------


def save(ctx: CommandContext) -> int:
    """``pbuild save -o FILE REF|TARGET``: one image as a docker-archive (default) or OCI archive."""
    from pbuild.lib.oci.archive import write_archive
    from pbuild.lib.oci.imagestore import normalize_name

    given: str = ctx.args.image
    names: Sequence[str]
    if _is_label(given):
        _, layout = _built_image(ctx, given)
        image = oci_layout.read_image(layout, platform=_host_platform())  # of an index: this machine's
        names = []
        for entry in oci_layout.read_index(layout):
            if entry.ref_name:
                with contextlib.suppress(PbuildError, ValueError):
                    names.append(normalize_name(entry.ref_name))
    else:
        stored: StoredImage = store_of(ctx).resolve(given)
        image = oci_layout.read_image(stored.layout)
        as_name = _name_or_none(given)
        names = [as_name] if as_name in stored.names else []
    write_archive(ctx.args.output, image, sorted(set(names)), archive_format=ctx.args.format)
    ctx.out(f"saved {image.digest} to {ctx.args.output} ({ctx.args.format})")
    return 0


def _host_platform() -> str:
    from pbuild.lib.oci.registry.pull import host_platform_name

    return host_platform_name()


def _name_or_none(text: str) -> str | None:
    from pbuild.lib.oci.errors import InvalidReference
    from pbuild.lib.oci.imagestore import normalize_name

    try:
        return normalize_name(text)
    except InvalidReference:
        return None


def load(ctx: CommandContext) -> int:
    """``pbuild load -i FILE``: a docker-archive or an OCI archive, checked whole, into the store."""
    from pbuild.lib.oci.archive import unpack

    store = store_of(ctx)
    archive = os.path.abspath(ctx.args.input)
    with store.scratch() as work:
        loaded = unpack(archive, os.path.join(work, "archive"))
        image = store.add_layout(loaded.layout, loaded.names, f"load {archive}")
    for name in loaded.names:
        ctx.out(f"Loaded image: {name}")
    if not loaded.names:
        ctx.out(f"Loaded image ID: {image.digest}")
    return 0


# -- push of a stored image ---------------------------------------------------------------------


def push_stored(ctx: CommandContext, given: str, destination: str | None) -> int:
    """``pbuild push REF`` (a stored image to its own name) or ``pbuild push REF DEST``."""
    from pbuild.rules.oci.push import push_main

    image = store_of(ctx).resolve(given)
    target = destination or _name_or_none(given)
    if target is None or (destination is None and target not in image.names):
        raise PbuildError(f"{given!r} is an image ID; pbuild push needs a name to push to",
                          hint="pbuild push ID REGISTRY/REPO:TAG, or tag it first (pbuild tag ID REGISTRY/REPO:TAG)")
    return int(push_main(image.layout, target, plain_http=ctx.args.plain_http, out=ctx.out))
