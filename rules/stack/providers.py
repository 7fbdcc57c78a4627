"""What a ``stack`` target gives the commands that run it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pbuild.engine.api import BuiltTarget, File, PbuildError, Provider
from pbuild.lib.digest import DigestError, oci_digest
from pbuild.tools.stack.spec import StackSpec, resolve


@dataclass(frozen=True)
class StackInfo(Provider):
    """A stack as analysis knows it, with nothing absolute (the analysis cache keeps it, and a
    workspace may move): ``spec`` names each image ``oci:pbuild-out/...`` and each bind source
    relative to the workspace, with ``image_digest`` empty, since the images are not built yet;
    ``digests`` pairs each service with its image's digest file (one line), read after the build.
    :func:`built_spec` turns it into what ``up`` runs."""

    spec: StackSpec
    digests: tuple[tuple[str, File], ...]


def built_spec(built: BuiltTarget) -> StackSpec:
    """The spec of a built ``stack`` target, ready for the supervisor: every image digest read
    from its digest file, every path absolute (``pbuild.tools.stack.spec.resolve`` against the
    workspace root). A ``PbuildError`` when the target is no stack or a digest file is damaged."""
    info = built.providers.get(StackInfo)
    if info is None:
        raise PbuildError(f"{built.label} (a {built.rule_name}) is not a stack", label=built.label,
                          hint='`pbuild up` takes a target of rule = "stack", or -f compose.yaml')
    digests: dict[str, str] = {}
    for service, file in info.digests:
        path = built.path(file)
        try:
            with open(path, encoding="utf-8") as handle:
                digests[service] = str(oci_digest(handle.read().strip(), where=file.path))
        except (OSError, UnicodeDecodeError) as exc:
            raise PbuildError(f"cannot read the digest of service {service!r}'s image ({file.path}): {exc}",
                              label=built.label, hint="build the stack again") from None
        except DigestError as exc:
            raise PbuildError.of(exc, label=built.label) from None
    spec = dataclasses.replace(info.spec, services=tuple(
        dataclasses.replace(s, image_digest=digests.get(s.name, "")) for s in info.spec.services))
    return resolve(spec, built.workspace_root)
