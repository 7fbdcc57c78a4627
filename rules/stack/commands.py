"""The stack family's commands: ``pbuild up``, ``down``, ``ps TARGET`` and ``logs TARGET``.

A stack is a ``stack`` target (``TARGET``) or a Compose file (``-f FILE``; ``--file`` for
``logs``, whose ``-f`` is ``--follow`` as in Compose). ``up`` builds what the stack needs and
hands the resolved spec to ``pbuild.tools.stack``; ``down``, ``ps`` and ``logs`` build nothing:
they find the stack by its origin (the target's label, the Compose file's path). Plain
``pbuild ps`` and ``pbuild logs NAME`` stay the launcher's (the CLI routes them).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from pbuild.engine.api import Command, CommandContext, Label, PbuildError

if TYPE_CHECKING:
    from pbuild.tools.stack.spec import StackSpec
    from pbuild.tools.stack.state import StackRecord

_FILE_HELP = "a Compose file instead of a stack target (the subset docs/stacks.md lists)"


def _add_target(parser: argparse.ArgumentParser, file_flags: tuple[str, ...] = ("-f", "--file")) -> None:
    parser.add_argument("target", nargs="?", metavar="TARGET", help="a stack target, e.g. //examples/stack:web")
    parser.add_argument(*file_flags, dest="file", metavar="FILE", help=_FILE_HELP)


def _configure_up(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)
    parser.add_argument("-d", "--detach", action="store_true",
                        help="return once every service is started (and healthy, where it has a healthcheck)")


def _configure_down(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)
    parser.add_argument("-v", "--volumes", action="store_true", help="also remove the stack's named volumes")
    parser.add_argument("-t", "--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between SIGTERM and SIGKILL (default 10)")


def _configure_ps(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)


def _configure_logs(parser: argparse.ArgumentParser) -> None:
    _add_target(parser, ("--file",))
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing what the services write")
    parser.add_argument("services", nargs="*", metavar="SERVICE", help="only these services (default: all)")


def _which(ctx: CommandContext, command: str) -> tuple[str | None, str | None]:
    """(label, None) or (None, Compose file path): exactly one of TARGET and --file."""
    target, path = ctx.args.target, ctx.args.file
    if (target is None) == (path is None):
        raise PbuildError(f"pbuild {command} takes a stack TARGET or -f COMPOSE_FILE (one of them)",
                          hint=f"e.g. `pbuild {command} //examples/stack:web` or `pbuild {command} -f compose.yaml`")
    if path is not None:
        return None, os.path.abspath(os.path.join(ctx.cwd, path))
    return target, None


def _canonical(ctx: CommandContext, target: str) -> str:
    """``//pkg:name`` of a label as the user typed it (``:name`` relative to where they stand),
    the form a stack target records as its origin."""
    root = ctx.workspace_root()
    rel = os.path.relpath(os.path.abspath(ctx.cwd), root)
    package = "" if rel == "." or rel.startswith("..") else rel.replace(os.sep, "/")
    return str(Label.parse(target, current_package=package))


def up(ctx: CommandContext) -> int:
    """``pbuild up [-d] TARGET`` / ``pbuild up [-d] -f FILE``."""
    from pbuild.tools.stack import client

    target, path = _which(ctx, "up")
    spare = client.Spare()  # a supervisor that starts while we build (sent away if not needed)
    try:
        spec = _compose_spec(ctx, path) if path is not None else _target_spec(ctx, str(target))
        return client.up(spec, detach=ctx.args.detach, spare=spare)
    finally:
        spare.close()


def _target_spec(ctx: CommandContext, target: str) -> StackSpec:
    from pbuild.rules.stack.providers import built_spec

    return built_spec(ctx.build_one(target))


def _compose_spec(ctx: CommandContext, path: str) -> StackSpec:
    """A Compose file's stack with every image ready: labels built, references pulled."""
    from pbuild.rules.oci.providers import ImageInfo
    from pbuild.tools.launcher.image import load_image
    from pbuild.tools.stack.compose import load_compose
    from pbuild.tools.stack.spec import image_kind, replace_image, resolve

    spec = load_compose(path)
    folder = os.path.dirname(path)
    for service in spec.services:
        kind, rest = image_kind(service.image)
        if kind == "label":
            label = rest
            if label.startswith(":"):  # relative to the Compose file's package, not the caller's
                root = ctx.workspace_root()
                rel = os.path.relpath(folder, root)
                if rel.startswith(".."):
                    raise PbuildError(f"{path}: service {service.name!r}: image {label!r} is relative, but the "
                                      f"Compose file is outside the workspace {root}", hint="write //pkg:target")
                label = str(Label.parse(label, current_package="" if rel == "." else rel.replace(os.sep, "/")))
            built = ctx.build_one(label)
            image = built.providers.get(ImageInfo)
            if image is None:
                raise PbuildError(f"{path}: service {service.name!r}: {built.label} is not an image",
                                  label=built.label, hint="image: names an image target or a registry reference")
            with open(built.path(image.digest), encoding="utf-8") as handle:
                digest = handle.read().strip()
            spec = replace_image(spec, service.name, f"oci:{built.path(image.layout)}", digest)
        elif kind == "registry":
            layout, digest = _pull(ctx, path, service.name, rest)
            spec = replace_image(spec, service.name, f"oci:{layout}", digest)
    spec = resolve(spec, folder)
    for service in spec.services:
        if not service.image_digest:  # an oci: or docker-archive: image: its digest, for the config hash
            spec = replace_image(spec, service.name, service.image, load_image(service.image).digest)
    return spec


def _pull(ctx: CommandContext, path: str, service: str, reference: str) -> tuple[str, str]:
    """A registry image in an OCI layout under the cache, pulled once per digest."""
    from pbuild.lib.errors import UserError
    from pbuild.lib.oci.blobstore import DirectoryBlobStore
    from pbuild.lib.oci.reference import Reference
    from pbuild.lib.oci.registry.pull import pull_image

    try:
        ref = Reference.parse_pinned(reference)
    except UserError as exc:
        raise PbuildError(f"{path}: service {service!r}: {exc.message}",
                          hint="pbuild pulls only images pinned by digest: write REGISTRY/REPO@sha256:... "
                               "(`skopeo inspect docker://REF` prints it)") from None
    assert ref.digest is not None
    cache = _cache_dir(ctx)
    layout = os.path.join(cache, "stack-images", str(ref.digest).replace(":", "-"))
    if not os.path.isfile(os.path.join(layout, "index.json")):
        host = ref.registry.rpartition(":")[0] if ref.registry.count(":") == 1 else ref.registry
        loopback = host in ("localhost", "127.0.0.1", "[::1]", "::1")  # local registries speak plain HTTP
        try:
            pull_image(reference, layout, plain_http=loopback,
                       blobs=DirectoryBlobStore(os.path.join(cache, "stack-images", "blobs")))
        except UserError as exc:
            raise PbuildError(f"{path}: service {service!r}: cannot pull {reference}: {exc.message}",
                              hint=exc.hint) from None
    return layout, str(ref.digest)


def _cache_dir(ctx: CommandContext) -> str:
    """``--cache-dir``, else the engine's default (``$PBUILD_CACHE``, ``$XDG_CACHE_HOME/pbuild``,
    ``~/.cache/pbuild``): the rule API has no accessor for it, so its rule is repeated here."""
    if ctx.args.cache_dir:
        return os.path.abspath(str(ctx.args.cache_dir))
    if os.environ.get("PBUILD_CACHE"):
        return os.path.abspath(os.environ["PBUILD_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pbuild")


def _find(ctx: CommandContext, command: str) -> tuple[str, str, StackRecord] | None:
    """(what the user named, the stack's folder, its record), or None when it is not up."""
    from pbuild.tools.stack import client

    target, path = _which(ctx, command)
    if path is not None:
        from pbuild.tools.stack.compose import load_compose

        origin = load_compose(path).origin
        shown = path
    else:
        origin = shown = _canonical(ctx, str(target))
    found = client.find(origin)
    if found is None:
        return None
    return shown, found[0], found[1]


def down(ctx: CommandContext) -> int:
    """``pbuild down [-v] [-t SECONDS] TARGET`` (or ``-f FILE``)."""
    from pbuild.tools.stack import client

    if ctx.args.timeout < 0:
        raise PbuildError(f"-t {ctx.args.timeout:g}: the timeout cannot be negative", hint="e.g. -t 10")
    found = _find(ctx, "down")
    if found is None:
        target, path = _which(ctx, "down")
        ctx.out(f"stack {target or path} is not running: nothing to do")
        return 0
    _, directory, _ = found
    return client.down(directory, timeout=ctx.args.timeout, volumes=ctx.args.volumes)


def ps(ctx: CommandContext) -> int:
    """``pbuild ps TARGET``: the stack's containers with state, health and ports."""
    from pbuild.tools.stack import client

    found = _find(ctx, "ps")
    if found is None:
        target, path = _which(ctx, "ps")
        ctx.out(f"stack {target or path} is not running")
        return 0
    return client.ps(found[2], ctx.out)


def logs(ctx: CommandContext) -> int:
    """``pbuild logs [-f] TARGET [SERVICE...]``: interleaved by time, prefixed by service."""
    from pbuild.tools.stack import client
    from pbuild.tools.stack.errors import StackError

    if ctx.args.file is not None and ctx.args.target is not None:  # `logs --file F SERVICE...`
        ctx.args.services = [ctx.args.target, *ctx.args.services]
        ctx.args.target = None
    found = _find(ctx, "logs")
    if found is None:
        target, path = _which(ctx, "logs")
        raise StackError(f"stack {target or path} is not running", hint="`pbuild up` starts it", exit_code=1)
    _, directory, record = found
    return client.show_logs(directory, record, list(ctx.args.services), follow=ctx.args.follow)


COMMANDS = [
    Command("up", help="start a stack", description="Build a stack's images, then start its services in "
            "dependency order on a network of their own (see docs/stacks.md).", run=up, configure=_configure_up,
            build_flags=True),
    Command("down", help="stop and remove a stack", description="Stop a stack's services (SIGTERM, then SIGKILL "
            "after the timeout) and remove its containers and network.", run=down, configure=_configure_down),
    # `pbuild ps` and `pbuild logs NAME` without a label or --file stay the launcher's (the CLI
    # routes them there before parsing); these are their stack forms.
    Command("ps", help="list containers (ps TARGET: a stack's)", description="List a stack's containers: "
            "state, health, ports. Without TARGET: every container (see docs/launcher.md).", run=ps,
            configure=_configure_ps),
    Command("logs", help="show a container's or a stack's output", description="Show a stack's output, "
            "interleaved by time, each line prefixed with its service. With a container NAME: that "
            "container's (see docs/launcher.md).", run=logs, configure=_configure_logs),
]
