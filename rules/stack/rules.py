"""The ``stack`` rule: services from image targets, each in a ``[NAME.services.SERVICE]`` table
with Compose's keys; building the stack builds its images."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NoReturn

from pbuild.engine.api import Attr, DefaultInfo, File, Provider, RuleContext, Target, attr, rule
from pbuild.rules.oci.providers import ImageInfo
from pbuild.rules.stack.providers import StackInfo
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.parse import SERVICE_KEYS, FieldError, parse_service
from pbuild.tools.stack.spec import (
    RESTART_POLICIES,
    DependencyError,
    ServiceSpec,
    StackSpec,
    check,
    project_name_problem,
)

# The type each service key is documented with (several kinds where Compose allows them).
_FIELD_KINDS = {
    "command": "string or string_list",
    "entrypoint": "string or string_list",
    "environment": "string_dict or string_list",
    "env_file": "string or string_list",
    "ports": "list of strings or tables",
    "volumes": "string_list",
    "depends_on": "string_list or dict",
    "healthcheck": "dict",
    "working_dir": "string",
    "user": "string",
}
_FIELDS: dict[str, Attr] = {
    "image": attr.label(SERVICE_KEYS["image"], required=True, providers=[ImageInfo]),
    "restart": attr.string(SERVICE_KEYS["restart"], default="no", values=RESTART_POLICIES),
    "outbound": attr.boolean(SERVICE_KEYS["outbound"]),
    **{key: Attr(kind, SERVICE_KEYS[key]) for key, kind in _FIELD_KINDS.items()},
}
assert set(_FIELDS) == set(SERVICE_KEYS), "every service key is documented"


@rule(
    "stack",
    attrs={
        "services": attr.dict(
            "The services, one table each: `[TARGET.services.NAME]` with the keys below (Compose's "
            "words). A stack needs at least one.",
            required=True, fields=dict(sorted(_FIELDS.items()))),
        "project_name": attr.string(
            "The stack's name, in its container names `<project_name>-<service>-1` (Compose's project "
            "name): lowercase letters, digits, '-' and '_'. Default: the target's name."),
    },
    doc="Several containers that work together, as Docker Compose runs them: each service's image is "
        "an `image` or `oci_pull` target, built with the stack; `pbuild up` starts the services in "
        "dependency order on a network of their own, where each reaches the others by service name.",
)
def _stack(ctx: RuleContext) -> list[Provider]:
    services: Mapping[str, Mapping[str, Any]] = ctx.attr.services
    if not services:
        ctx.fail("a stack needs at least one service", attr="services",
                 hint=f'add [{ctx.label.name}.services.NAME] with image = ":an_image_target"')
    name = ctx.attr.project_name
    if name is None:
        name = ctx.label.name.lower()
        problem = project_name_problem(name)
        if problem:
            ctx.fail(f"the target name {ctx.label.name!r} cannot name the stack: {problem}",
                     hint="set project_name = \"...\"")
    else:
        problem = project_name_problem(name)
        if problem:
            ctx.fail(f"{name!r} is not valid: {problem}", attr="project_name")
    built: list[ServiceSpec] = []
    digests: list[tuple[str, File]] = []
    files: list[File] = []
    for service_name, entry in services.items():
        where = f"services.{service_name}"
        image = entry.get("image")
        if not isinstance(image, Target):
            ctx.fail(f"service {service_name!r} names no image", attr=where,
                     hint='add image = ":an_image_target" (an image or oci_pull target)')
        info = image[ImageInfo]
        try:
            built.append(parse_service(
                service_name, entry, image="oci:" + info.layout.path, base=ctx.package,
                allow_absolute_binds=False, read_env_file=lambda rel: _read_env_file(ctx, rel)))
        except FieldError as exc:
            _fail_at(ctx, exc, ".".join((where, *exc.path)))
        digests.append((service_name, info.digest))
        files.extend((info.layout, info.digest))
    spec = StackSpec(name=name, origin=str(ctx.label), services=tuple(built))
    try:
        check(spec)
    except DependencyError as exc:
        _fail_at(ctx, exc, f"services.{exc.service}.depends_on")
    except StackError as exc:
        _fail_at(ctx, exc, "services")
    return [DefaultInfo(files=tuple(sorted(set(files)))), StackInfo(spec, tuple(digests))]


def _fail_at(ctx: RuleContext, exc: StackError, where: str) -> NoReturn:
    ctx.fail(exc.message, attr=where, hint=exc.hint)


def _read_env_file(ctx: RuleContext, rel: str) -> str:
    """An ``env_file`` (workspace-relative, inside the workspace by :func:`parse_service`), read at
    analysis and recorded, so editing it analyzes the stack again (and its config hash changes)."""
    root = os.path.realpath(ctx.workspace_root)
    real = os.path.realpath(os.path.join(root, rel))
    if not real.startswith(root + os.sep):
        raise FieldError(f"{rel!r} leads outside the workspace (by a symbolic link)", path=("env_file",),
                         hint="keep env files inside the workspace")
    try:
        text = ctx.read_workspace_file(rel)
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldError(f"cannot read env file {rel}: {exc}", path=("env_file",),
                         hint="an env file is a UTF-8 text file of NAME=VALUE lines") from None
    if text is None:
        raise FieldError(f"env file {rel} does not exist", path=("env_file",),
                         hint="create it, or fix the name (relative to the package)")
    return text


RULES = [_stack]
