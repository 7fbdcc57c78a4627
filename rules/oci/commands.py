"""The image family's commands: ``pbuild push``, ``images``, ``pull``, ``rmi``, ``tag``, ``save``, ``load``, ``sbom``.

Registered in ``COMMANDS`` (read by the engine's CLI), the way ``RULES`` registers rules; the
heavy parts (the registry client, the image store, archives) are imported only when a command
runs (:mod:`pbuild.rules.oci.imagecmds`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pbuild.engine.api import Command, CommandContext, PbuildError


def _configure_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="TARGET|IMAGE",
                        help="an image target (//app:image), or an image of `pbuild images`")
    parser.add_argument("reference", metavar="REF", nargs="?",
                        help="where to push, e.g. 127.0.0.1:5000/app:1.0 (for a stored image: default its name)")
    parser.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to the registry")


def push(ctx: CommandContext) -> int:
    """``pbuild push TARGET REF``: build the image target, then push its layout to REF;
    ``pbuild push IMAGE [REF]``: push a stored image (to its own name, as ``docker push``)."""
    from pbuild.rules.oci.imagecmds import push_stored
    from pbuild.rules.oci.providers import ImageInfo
    from pbuild.rules.oci.push import push_main

    source: str = ctx.args.source
    if not source.startswith(("//", ":", "@")):
        return push_stored(ctx, source, ctx.args.reference)
    if ctx.args.reference is None:
        raise PbuildError(f"pbuild push {source}: no REF to push to",
                          hint=f"pbuild push {source} REGISTRY/REPO:TAG")
    built = ctx.build_one(source)
    image = built.providers.get(ImageInfo)
    if image is None:
        raise PbuildError(f"{built.label} is not an image", label=built.label,
                          hint="pbuild push takes an image target")
    return int(push_main(built.path(image.layout), ctx.args.reference, plain_http=ctx.args.plain_http, out=ctx.out))


def _configure_images(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="also show dangling images (no name left)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")
    parser.add_argument("--no-trunc", action="store_true", help="show whole image IDs (sha256:...)")


def _configure_pull(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...")
    parser.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to the registry")
    parser.add_argument("--platform", metavar="OS/ARCH", help="the platform to pick from an index (default: this "
                                                               "machine's)")


def _configure_rmi(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", metavar="REF|ID", nargs="+")
    parser.add_argument("-f", "--force", action="store_true", help="remove even an image a container uses")


def _configure_tag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="a stored image (name or ID) or an image target label")
    parser.add_argument("target", metavar="DST", help="the new name, REGISTRY/REPO:TAG")


def _configure_save(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="REF|TARGET", help="a stored image or an image target label")
    parser.add_argument("-o", "--output", metavar="FILE", required=True, help="the archive to write")
    parser.add_argument("--format", choices=("docker-archive", "oci-archive"), default="docker-archive",
                        help="docker-archive (default, as docker save) or oci-archive")


def _configure_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", metavar="FILE", required=True,
                        help="a docker-archive or an OCI archive (detected)")


def _configure_sbom(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="an image target (//app:image)")
    parser.add_argument("--platform", metavar="OS/ARCH",
                        help="the platform's document of a multi-platform image (default: the primary platform's)")


def sbom(ctx: CommandContext) -> int:
    """``pbuild sbom TARGET [--platform OS/ARCH]``: build the image target, print its SPDX document."""
    from pbuild.rules.oci.sbomcmd import sbom as print_sbom

    return print_sbom(ctx)


def _lazy(name: str) -> Callable[[CommandContext], int]:
    def run(ctx: CommandContext) -> int:
        from pbuild.rules.oci import imagecmds

        return int(getattr(imagecmds, name)(ctx))

    run.__name__ = name
    return run


COMMANDS = [
    Command("push", help="push an image to a registry",
            description="Build an image target and push it to REF, or push a stored image (to its name or REF).",
            run=push, configure=_configure_push, build_flags=True),
    Command("images", help="list images", description="List the workspace's built images and the image store's.",
            run=_lazy("list_images"), configure=_configure_images),
    Command("pull", help="pull an image into the image store",
            description="Pull REF (by tag or digest) from its registry into the image store.",
            run=_lazy("pull"), configure=_configure_pull),
    Command("rmi", help="remove images from the image store",
            description="Untag each name given; delete an image no name holds any more, or given by ID.",
            run=_lazy("rmi"), configure=_configure_rmi),
    Command("tag", help="name an image", description="Point the name DST at the image SRC (stored or built).",
            run=_lazy("tag"), configure=_configure_tag, build_flags=True),
    Command("save", help="write an image to an archive",
            description="Write one image (stored or built) to FILE, as docker save does.",
            run=_lazy("save"), configure=_configure_save, build_flags=True),
    Command("load", help="load an image archive into the image store",
            description="Load a docker-archive or OCI archive; a damaged or hostile one is refused whole.",
            run=_lazy("load"), configure=_configure_load),
    Command("sbom", help="print an image's SBOM (SPDX 2.3 JSON)",
            description="Build an image target and print its software bill of materials: the SPDX 2.3 JSON "
                        "document of its Debian packages, wheels and first-party files, with their licenses.",
            run=sbom, configure=_configure_sbom, build_flags=True),
]
