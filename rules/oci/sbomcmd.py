"""``pbuild sbom TARGET [--platform OS/ARCH]``: build an image target and print its SPDX document.

The image action writes the documents beside the layout (``sbom.spdx.json`` for the primary
platform, ``sbom.<slug>.spdx.json`` per platform of a multi-platform image); this command only
picks one and copies its bytes to stdout unchanged, so ``pbuild sbom T > f`` is that file.
"""

from __future__ import annotations

import os
import sys
import tomllib

from pbuild.engine.api import BuiltTarget, CommandContext, PbuildError
from pbuild.lib.platforms import Platform, PlatformError, read_platforms
from pbuild.rules.oci.providers import ImageInfo


def sbom(ctx: CommandContext) -> int:
    """Build the image target ``ctx.args.target`` and write its SBOM's bytes to stdout."""
    requested = _parse_platform(ctx.args.platform) if ctx.args.platform else None
    built = ctx.build_one(ctx.args.target)
    image = built.providers.get(ImageInfo)
    if image is None:
        raise PbuildError(f"{built.label} is a {built.rule_name} target, not an image: it has no SBOM",
                          hint="pbuild sbom takes an image target (rule = \"image\")")
    if image.sbom is None:
        raise PbuildError(f"{built.label} has no SBOM",
                          hint="images over a pulled or bare OCI layout still get one; rebuild the target")
    path = _document_path(ctx, built, built.path(image.sbom), image, requested)
    with open(path, "rb") as handle:
        data = handle.read()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _parse_platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except PlatformError as exc:
        raise PbuildError(f"--platform {text}: {exc.message}", hint=exc.hint) from None


def _document_path(ctx: CommandContext, built: BuiltTarget, primary_path: str, image: ImageInfo,
                   platform: Platform | None) -> str:
    """The primary platform's document (``primary_path``), or ``platform``'s (refused when the image
    was not built for it)."""
    if platform is None:
        return primary_path
    built_for = image.platforms or (str(_primary(ctx)),)
    if str(platform) not in built_for:
        raise PbuildError(f"{built.label} is built for {', '.join(built_for)}, not {platform}",
                          hint=f"pick one of those, or add {platform} to [platforms] images in WORKSPACE.toml")
    per_platform = os.path.join(os.path.dirname(primary_path), f"sbom.{platform.slug}.spdx.json")
    if os.path.exists(per_platform):
        return per_platform
    if len(built_for) == 1 or platform == _primary(ctx):
        return primary_path  # a single-platform image's one document, or the primary's
    raise PbuildError(f"{built.label} has no SBOM for {platform} ({per_platform} is missing)",
                      hint="rebuild the image target")


def _primary(ctx: CommandContext) -> Platform:
    """The workspace's primary platform (``[platforms]`` of WORKSPACE.toml; see lib/platforms)."""
    path = os.path.join(ctx.workspace_root(), "WORKSPACE.toml")
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
        return read_platforms(config).primary
    except (OSError, tomllib.TOMLDecodeError, PlatformError) as exc:
        # The build just read this file; a failure here means it changed since.
        raise PbuildError(f"cannot read [platforms] of {path}: {exc}", hint="fix WORKSPACE.toml") from None
