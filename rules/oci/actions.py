"""The in-process actions of the image rules: pure functions of their declared inputs and params.

Each writes a layer blob plus a sidecar JSON with its diff_id, digest, size and media type, so
the image action never hashes a layer again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pbuild.engine.api import ActionIO
from pbuild.engine.errors import PbuildError
from pbuild.lib import determinism
from pbuild.lib.oci.errors import LayoutError
from pbuild.rules.oci import layout, pyc, sbom
from pbuild.rules.oci.isolate import run_isolated
from pbuild.rules.oci.layerwriter import (
    LayerDigests,
    LayerEntriesError,
    LayerEntry,
    entries_from_tree,
    write_layer,
)


def _write(io: ActionIO, params: Mapping[str, Any], entries: list[LayerEntry],
           contents: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
    digests = write_layer(entries, io.output_path(params["blob"]), compression=params["compression"],
                          level=params.get("level"), mtime=params["epoch"], jobs=io.jobs)
    sidecar: dict[str, Any] = dict(digests.to_json())
    if contents is not None:
        # What the SBOM lists (pbuild.rules.oci.sbom), so that no layer is read again for it.
        sidecar["contents"] = contents
    with open(io.output_path(params["meta"]), "wb") as handle:
        handle.write(determinism.canonical_json(sidecar))


def _file_record(path: str, source: str) -> dict[str, str]:
    """A first-party file of ``contents``: its in-image path and SHA1 and SHA256 (both SPDX asks for)."""
    sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with open(source, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    return {"path": path.strip("/"), "sha1": sha1.hexdigest(), "sha256": sha256.hexdigest()}


def _files_contents(entries: list[LayerEntry], jobs: int) -> dict[str, list[dict[str, Any]]]:
    """``contents`` listing the regular files of ``entries`` that come from the host (sorted by path)."""
    sources = sorted((e.path, e.source) for e in entries if e.kind == "file" and e.source is not None)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        files = list(pool.map(lambda item: _file_record(*item), sources))
    return {"files": files}


def write_file_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    """The ``layer`` rule: files, trees, symlinks and directories at their destinations."""
    entries: list[LayerEntry] = []
    for item in params["entries"]:
        kind, dest, origin = item["kind"], item["dest"], item.get("origin", "")
        if kind == "file":
            path = io.input_path(item["input"])
            mode = item.get("mode")
            if mode is None:
                mode = determinism.normalize_mode(os.stat(path).st_mode)
            entries.append(LayerEntry(dest, "file", mode, source=path, origin=origin))
        elif kind == "tree":
            entries += entries_from_tree(io.input_path(item["input"]), prefix=dest, origin=origin)
        elif kind == "dir":
            entries.append(LayerEntry(dest, "dir", item.get("mode") or determinism.DIR_MODE, origin=origin))
        elif kind == "symlink":
            entries.append(LayerEntry(dest, "symlink", 0o777, target=item["target"], origin=origin))
    modes = {k.strip("/"): v for k, v in params.get("modes", {}).items()}
    if modes:
        unknown = sorted(set(modes) - {e.path.strip("/") for e in entries})
        if unknown:
            raise LayerEntriesError(f"modes names paths that are not in the layer: {', '.join('/' + u for u in unknown)}",
                             hint="keys of modes are destinations inside the image")
        entries = [LayerEntry(e.path, e.kind, modes.get(e.path.strip("/"), e.mode), e.source, e.data, e.target, e.origin)
                   for e in entries]
    _write(io, params, entries, _files_contents(entries, io.jobs))


def write_wheel_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    """One or more locked wheels installed into the image interpreter's site-packages.

    Runs in its own interpreter (see :mod:`pbuild.rules.oci.isolate`).
    """
    run_isolated(_write_wheel_layer, io, params, (params["blob"], params["meta"]))


def _write_wheel_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    # installer is imported only when a wheel layer is written
    from pbuild.rules.oci import wheelmeta, wheels

    entries: list[LayerEntry] = []
    packages: list[dict[str, Any]] = []
    for wheel in params["wheels"]:
        entries += wheels.wheel_entries(io.input_path(wheel), site_packages=params["site_packages"],
                                        interpreter=params["interpreter"], python_version=params["python_version"],
                                        jobs=io.jobs, bytecode=params["bytecode_mode"], io=io)
        packages.append(wheelmeta.wheel_package(io.input_path(wheel)))
    packages.sort(key=lambda p: (p["name"], p["version"], p["filename"]))
    _write(io, params, entries, {"packages": packages})


def write_app_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    """A py_binary's first-party sources below the app root, with bytecode."""
    root = params["root"].strip("/")
    entries = [
        LayerEntry(f"{root}/{item['import_path']}", "file", determinism.FILE_MODE, source=io.input_path(item["input"]),
                   origin=item["input"])
        for item in params["sources"]
    ]
    contents = _files_contents(entries, io.jobs)  # the sources only: the .pyc are generated from them
    with_pyc = pyc.add_pyc(entries, io=io, python=params["interpreter"], python_version=params["python_version"],
                           jobs=io.jobs, mode=params["bytecode_mode"])
    _write(io, params, with_pyc, contents)


def _read_base(io: ActionIO, item: Mapping[str, Any]) -> layout.BaseImage | None:
    """The base image of one platform (a layout with an image index: that platform's manifest)."""
    if not item.get("base"):
        return None
    base_dir = io.input_path(item["base"])
    if not os.path.isdir(base_dir):
        base_dir = os.path.dirname(base_dir)  # the base was given as the layout's index.json
    try:
        base = layout.read_layout(base_dir, linkable=not item.get("base_is_source", False),
                                  platform=item["platform"])
    except LayoutError as exc:
        # Name the base as the user wrote it, not by this machine's absolute path.
        shown = item["base"] if os.path.isdir(io.input_path(item["base"])) else os.path.dirname(item["base"])
        raise PbuildError(exc.message.replace(base_dir, shown), label=io.label, hint=exc.hint) from None
    if item.get("check_base_platform") and f"{base.os}/{base.architecture}" != item["platform"]:
        raise PbuildError(f"image {io.label}: its base holds an image for {base.os}/{base.architecture}, "
                          f"not {item['platform']}", label=io.label,
                          hint="give a base with an image index covering every platform of the image, "
                               "or build the image for the base's platform only (platforms = [...])")
    return base


def _contents(io: ActionIO, metas: list[str]) -> list[Mapping[str, Any]]:
    """The ``contents`` objects of the layers' sidecars, bottom to top (sidecars without one skipped)."""
    found = []
    for meta in metas:
        with open(io.input_path(meta), "rb") as handle:
            contents = json.load(handle).get("contents")
        if isinstance(contents, Mapping):
            found.append(contents)
    return found


def write_image(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Assemble each platform's config and manifest (and, for several platforms, the image index
    over them) and the SBOM of each; write the OCI layout, the docker-archive of the primary
    platform, the SBOM files and the digest file."""
    cfg = params["config"]
    run = layout.RunConfig(
        entrypoint=tuple(cfg["entrypoint"]) if cfg.get("entrypoint") is not None else None,
        cmd=tuple(cfg["cmd"]) if cfg.get("cmd") is not None else None,
        env=cfg.get("env", {}),
        workdir=cfg.get("workdir") or None,
        user=cfg.get("user") or None,
        labels=cfg.get("labels", {}),
        exposed_ports=tuple(cfg.get("exposed_ports", ())),
    )
    built: list[layout.PlatformImage] = []
    artifacts: list[layout.Artifact] = []
    for item in params["images"]:
        base = _read_base(io, item)
        layers = []
        for entry in item["layers"]:
            with open(io.input_path(entry["meta"]), "rb") as handle:
                digests = LayerDigests.from_json(json.load(handle))
            layers.append(layout.BlobRef(digests, io.input_path(entry["blob"]), entry["created_by"]))
        image, all_layers = layout.build_image(base=base, layers=layers, run=run, epoch=params["epoch"],
                                               annotations=params.get("annotations", {}),
                                               architecture=item["platform"].partition("/")[2])
        config = json.loads(image.config)["config"]
        if not config.get("Entrypoint") and not config.get("Cmd"):
            raise PbuildError(
                f"image {io.label} has neither an entrypoint nor a cmd (nor does its base)",
                label=io.label,
                hint="set entrypoint = [...] or cmd = [...], or put a py_binary in layers",
            )
        built.append(layout.PlatformImage(item["platform"], image, tuple(all_layers)))
        document = sbom.spdx_document(image_name=params["image_name"], image_digest=image.manifest_digest,
                                      platform=item["platform"], contents=_contents(io, item["contents"]),
                                      epoch=params["epoch"], tool_version=params["tool_version"])
        with open(io.output_path(item["sbom"]), "wb") as handle:
            handle.write(document)
        if params.get("primary_sbom") and len(built) - 1 == params["primary"]:
            with open(io.output_path(params["primary_sbom"]), "wb") as handle:
                handle.write(document)
        if params["sbom_artifact"]:
            artifacts.append(layout.artifact_manifest(document, sbom.SPDX_MEDIA_TYPE,
                                                      layout.manifest_descriptor(image)))
    index = layout.image_index(built) if params["index"] else None
    primary = built[params["primary"]]
    tags = params.get("tags", [])
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(layout.write_multi_layout, io.output_path(params["layout"]), built, index, tags, artifacts),
            pool.submit(layout.write_docker_archive, io.output_path(params["tarball"]), primary.image,
                        list(primary.layers), tags, mtime=params["epoch"]),
        ]
        for future in done:
            future.result()
    top = layout.sha256_digest(index) if index is not None else primary.image.manifest_digest
    with open(io.output_path(params["digest"]), "w", encoding="ascii") as handle:
        handle.write(top + "\n")
