"""``oci_pull``: a base image from a registry, pinned by digest (like rules_oci's oci_pull).

The pull is a fetch action keyed by the pinned digest: it needs the network once, verifies every
blob against its digest, and from then on the result comes from the cache, offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pbuild.engine.api import ActionIO, DefaultInfo, Provider, RuleContext, attr, rule
from pbuild.lib import atomicio
from pbuild.rules.oci.providers import ImageInfo

PULL_VERSION = "1"
_PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def pull_action(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Pull ``params['image']`` into the declared layout directory; write its digest file."""
    from pbuild.lib.oci.registry.pull import pull_image

    layout_dir = io.output_path(params["layout"])
    os.rmdir(layout_dir)  # the puller writes a complete layout beside and renames it into place
    # Pulled blobs are kept in the engine's CAS (under --cache-dir), so a pull of a digest seen
    # before needs no network.
    report = pull_image(params["image"], layout_dir, plain_http=params["plain_http"],
                        platform=params["platform"], blobs=io.oci_blobs)
    atomicio.write_text(io.output_path(params["digest"]), report.digest + "\n")


@rule(
    "oci_pull",
    attrs={
        "image": attr.string("Registry reference pinned by digest: REGISTRY/REPO@sha256:<64 hex>.", required=True),
        "plain_http": attr.boolean("Talk HTTP, not HTTPS, to the registry (a local registry)."),
        "platform": attr.string("os/arch to pick from an image index.", default="linux/amd64"),
    },
    doc="A base image pulled from a registry, verified by digest and cached; usable offline afterwards.",
)
def _oci_pull(ctx: RuleContext) -> list[Provider]:
    image = ctx.attr.image
    if not _PINNED.match(image):
        ctx.fail(f"{image!r} is not pinned by digest", attr="image",
                 hint="write REGISTRY/REPO@sha256:... (`skopeo inspect docker://REF` prints the digest)")
    name = ctx.label.name
    layout = ctx.declare_directory(f"{name}/oci")
    digest = ctx.declare_file(f"{name}/digest")
    ctx.actions.call(
        pull_action,
        version=PULL_VERSION,
        params={"image": image, "plain_http": ctx.attr.plain_http, "platform": ctx.attr.platform,
                "layout": layout.path, "digest": digest.path},
        inputs=(),
        outputs=(layout, digest),
        mnemonic="OciPull",
        network=True,
        progress=f"pulling {image}",
    )
    # No docker-archive for a pulled base; an image putting py_binary layers on it names the
    # base's Python with its own `interpreter` attribute.
    return [DefaultInfo(files=(layout, digest)), ImageInfo(layout, digest, None, (), (), None)]
