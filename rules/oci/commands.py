"""The image family's commands: ``pbuild push`` and ``pbuild images``.

Registered in ``COMMANDS`` (read by the engine's CLI), the way ``RULES`` registers rules; the
heavy parts (the registry client) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import os

from pbuild.engine.api import OUT_DIR, Command, CommandContext, PbuildError


def _configure_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("reference", metavar="REF", help="e.g. 127.0.0.1:5000/app:1.0")
    parser.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to the registry")


def push(ctx: CommandContext) -> int:
    """``pbuild push TARGET REF``: build the image target, then push its layout to REF."""
    from pbuild.rules.oci.providers import ImageInfo
    from pbuild.rules.oci.push import push_main

    built = ctx.build_one(ctx.args.target)
    image = built.providers.get(ImageInfo)
    if image is None:
        raise PbuildError(f"{built.label} is not an image", label=built.label,
                          hint="pbuild push takes an image target")
    return int(push_main(built.path(image.layout), ctx.args.reference, plain_http=ctx.args.plain_http, out=ctx.out))


def list_images(ctx: CommandContext) -> int:
    """``pbuild images``: every ``pbuild-out/**/digest`` beside an ``oci/`` layout."""
    top = os.path.join(ctx.workspace_root(), OUT_DIR)
    rows = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        if "digest" in filenames and os.path.isdir(os.path.join(dirpath, "oci")):
            rel = os.path.relpath(dirpath, top)
            package, _, name = rel.rpartition("/")
            with open(os.path.join(dirpath, "digest"), encoding="utf-8") as handle:
                digest = handle.read().strip()
            size, tags = _layout_size_and_tags(os.path.join(dirpath, "oci"), digest)
            rows.append((f"//{package}:{name}", ",".join(tags) or "<none>", digest, size))
    ctx.out(f"{'TARGET':30} {'TAGS':30} {'DIGEST':20} SIZE")
    for label, tag_text, digest, size in rows:
        ctx.out(f"{label:30} {tag_text:30} {digest[:19]:20} {size / 1e6:.1f} MB")
    return 0


def _layout_size_and_tags(layout: str, digest: str) -> tuple[int, list[str]]:
    """Layer bytes of the image ``digest`` in ``layout`` and its tags; (0, []) if unreadable."""
    from pbuild.lib.errors import UserError
    from pbuild.lib.oci import layout as oci_layout

    try:
        entries = oci_layout.read_index(layout)
        named = [e for e in entries if e.blob.digest == digest]
        if not named:
            return 0, []
        manifest = oci_layout.read_document(named[0].blob)
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        return size, [e.ref_name for e in entries if e.ref_name]
    except (UserError, ValueError, TypeError, AttributeError):
        return 0, []


COMMANDS = [
    Command("push", help="push an image to a registry", description="Build an image target and push it to REF.",
            run=push, configure=_configure_push, build_flags=True),
    Command("images", help="list built images", description="List images built in this workspace.",
            run=list_images),
]
