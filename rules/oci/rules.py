"""The ``layer`` and ``image`` rules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pbuild.engine.api import (
    Attr,
    DefaultInfo,
    File,
    Provider,
    RuleContext,
    Target,
    Toolchain,
    ToolchainInfo,
    ToolchainLayer,
    attr,
    rule,
)
from pbuild.engine.errors import PbuildError
from pbuild.lib import determinism
from pbuild.lib.platforms import Platform, PlatformError, WorkspacePlatforms
from pbuild.rules.oci import actions, pyc, sbom
from pbuild.rules.oci.layerwriter import clean_path
from pbuild.rules.oci.providers import ImageInfo, Layer, LayerInfo, PythonRuntimeInfo
from pbuild.rules.platforms import workspace_platforms
from pbuild.rules.python.providers import PyBinaryInfo, PyInfo, Wheel

COMPRESSIONS = ("gzip", "none", "zstd")
_T = TypeVar("_T")
_SUFFIX = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}
#: Bumped whenever an action function's output changes for the same inputs and params.
LAYER_VERSION = "7"  # 7: the sidecars gained "contents" (the SBOM's)
IMAGE_VERSION = "2"  # 2: image indexes and SBOMs

#: gzip level for the large generated layers (wheels, Debian packages): level 1 is about 3.5x as
#: fast as 6 and only 10-15% larger on these mostly-binary files; set compression_level for smaller.
FAST_GZIP_LEVEL = 1


def compression_attrs(default_gzip_level: int) -> dict[str, Attr]:
    return {
        "compression": attr.string("Layer compression: gzip (default), zstd, or none.", default="gzip",
                                   values=COMPRESSIONS),
        "compression_level": attr.integer(f"Compression level (gzip 1-9, zstd 1-19); unset = {default_gzip_level} "
                                          "for gzip, 3 for zstd."),
    }


def effective_level(compression: str, level: int | None, default_gzip_level: int) -> int | None:
    """The level to write with: the attribute's, else the rule's gzip default (zstd keeps its own)."""
    if level is not None or compression != "gzip":
        return level
    return default_gzip_level


def _relative_to_package(ctx: RuleContext, file: File) -> str:
    """Where a file goes below the prefix: its path inside its package, or its base name if foreign."""
    for root in (f"{ctx.package}/" if ctx.package else "", ctx.out_prefix):
        if root and file.path.startswith(root):
            return file.path[len(root):]
    return file.path if not ctx.package and file.is_source else file.basename


def _parse_mode(ctx: RuleContext, key: str, text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o7777:
        ctx.fail(f"mode {text!r} for {key} is not an octal mode", attr="modes", hint='write modes like "0755"')
    return value


def _dest(ctx: RuleContext, path: str, attr_name: str) -> str:
    try:
        return clean_path(path)
    except PbuildError as exc:
        ctx.fail(exc.message, attr=attr_name, hint=exc.hint)


@rule(
    "layer",
    attrs={
        "srcs": attr.label_list("Files, or targets whose outputs to include. A file from this package keeps "
                                "its path inside the package; others keep their base name; a directory "
                                "output is copied as a tree.", allow_files=True),
        "prefix": attr.string("Directory inside the image that srcs are placed below.", default="/"),
        "modes": attr.string_dict("In-image path → octal mode (\"0755\"); default 0755 for executables and "
                                  "directories, 0644 otherwise."),
        "symlinks": attr.string_dict("In-image link path → link target."),
        "directories": attr.string_list("Empty directories to create (mode 0755)."),
        **compression_attrs(6),
    },
    doc="One deterministic layer (sorted entries, mtime SOURCE_DATE_EPOCH, owner 0:0, normalized modes).",
)
def _layer(ctx: RuleContext) -> list[Provider]:
    prefix = _dest(ctx, ctx.attr.prefix, "prefix")
    entries: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    def claim(dest: str, what: str, attr_name: str) -> None:
        if dest in seen:
            ctx.fail(f"two layer entries at one path /{dest}: {seen[dest]} and {what}", attr=attr_name,
                     hint="give each entry its own destination")
        seen[dest] = what

    modes = {}
    for key, text in ctx.attr.modes.items():
        modes[_dest(ctx, key, "modes")] = _parse_mode(ctx, key, text)
    inputs: list[File] = []
    for file in ctx.files.srcs:
        rel = _relative_to_package(ctx, file)
        dest = _dest(ctx, f"{prefix}/{rel}" if prefix else rel, "srcs")
        claim(dest, file.path, "srcs")
        inputs.append(file)
        kind = "tree" if file.is_directory else "file"
        entries.append({"kind": kind, "dest": dest, "input": file.path, "origin": file.path,
                        "mode": modes.get(dest) if kind == "file" else None})
    for link, target in sorted(ctx.attr.symlinks.items()):
        dest = _dest(ctx, link, "symlinks")
        claim(dest, f"symlink {link}", "symlinks")
        entries.append({"kind": "symlink", "dest": dest, "target": target, "origin": f"symlink {link}"})
    for directory in ctx.attr.directories:
        dest = _dest(ctx, directory, "directories")
        claim(dest, f"directory {directory}", "directories")
        entries.append({"kind": "dir", "dest": dest, "mode": modes.get(dest), "origin": f"directory {directory}"})
    compression = ctx.attr.compression
    blob = ctx.declare_file(ctx.label.name + _SUFFIX[compression])
    meta = ctx.declare_file(ctx.label.name + ".layer.json")
    ctx.actions.call(
        actions.write_file_layer,
        version=LAYER_VERSION,
        params={"entries": entries, "modes": {k: v for k, v in modes.items()}, "compression": compression,
                "level": effective_level(compression, ctx.attr.compression_level, 6),
                "epoch": determinism.source_date_epoch(),
                "blob": blob.path, "meta": meta.path},
        inputs=inputs,
        outputs=(blob, meta),
        mnemonic="Layer",
    )
    return [DefaultInfo(files=(blob, meta)), LayerInfo((Layer(blob, meta, f"pbuild layer {ctx.label}"),))]


# ---------------------------------------------------------------------------------------------
# image


_WHEEL_TAGS = re.compile(r"-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")


def _check_wheel_python(ctx: RuleContext, wheel: Wheel, filename: str, version: str) -> None:
    match = _WHEEL_TAGS.search(filename)
    if not match:
        return
    tags = match["py"].split(".")
    want = "cp" + version.replace(".", "")
    ok = any(t in (want, "py3", "py2.py3") or t.startswith("py3") for t in tags) or match["abi"] == "abi3"
    if not ok:
        ctx.fail(f"wheel {filename} is not for the image's Python {version}", attr="layers",
                 hint=f"lock wheels for CPython {version} (WORKSPACE.toml [python] version) or use another interpreter")


@rule(
    "image",
    attrs={
        "base": attr.label("Base image: an image target, or an OCI layout (a directory or a filegroup of its files).",
                           allow_files=True),
        "layers": attr.label_list("Layers bottom to top: layer, deb_packages, py_binary (one layer per locked "
                                  "wheel plus one app layer) or image targets' layers."),
        "entrypoint": attr.string_list("ENTRYPOINT; default for a py_binary: its main run by the image's Python."),
        "cmd": attr.string_list("CMD (arguments after the entrypoint); `pbuild run IMAGE ARG...` replaces it."),
        "env": attr.string_dict("Environment variables (added to the base's)."),
        "workdir": attr.string("Working directory of the entrypoint."),
        "user": attr.string("User (name or uid[:gid]) the entrypoint runs as."),
        "labels": attr.string_dict("Image config labels."),
        "exposed_ports": attr.string_list("Ports such as \"8080/tcp\"."),
        "annotations": attr.string_dict("Manifest annotations."),
        "repo_tags": attr.string_list("Tags for the docker-archive and index.json (\"app:1.0\"); default "
                                      "\"<package>/<name>:latest\". (Named repo_tags because tags is a common attribute.)"),
        "interpreter": attr.string("In-image Python for py_binary layers; default: the one a deb_packages layer "
                                   "or the base provides."),
        "app_root": attr.string("Where a py_binary's first-party sources go (on PYTHONPATH).", default="/app"),
        "max_layers": attr.integer("Layer budget: wheels beyond it share one layer.", default=100),
        "bytecode": attr.string("Hash-based .pyc for py_binary layers, compiled by the image's own Python "
                                "(its deb_packages tree): skip-tests (every module but those in "
                                "tests/ or test/ packages), all, or none.", default="skip-tests",
                                values=pyc.BYTECODE_MODES),
        "platforms": attr.string_list("Platforms to build (\"linux/amd64\", \"linux/arm64\"); more than one "
                                      "makes an OCI image index. Default: [platforms] images of WORKSPACE.toml. "
                                      "Each must be one [platforms] locks covers."),
        "sbom": attr.boolean("Store each platform's SPDX document in the layout as an OCI artifact whose "
                             "subject is that platform's manifest (the sbom*.spdx.json files beside the "
                             "layout are written either way).", default=True),
        **compression_attrs(FAST_GZIP_LEVEL),
    },
    doc="A reproducible OCI image: pbuild-out/<pkg>/<name>/oci (layout; for several platforms an image "
        "index), image.tar (docker-archive of the primary platform), digest, sbom.spdx.json.",
)
def _image(ctx: RuleContext) -> list[Provider]:
    name = ctx.label.name
    compression = ctx.attr.compression
    level = effective_level(compression, ctx.attr.compression_level, FAST_GZIP_LEVEL)
    epoch = determinism.source_date_epoch()
    workspace, platforms = _image_platforms(ctx)
    primary = workspace.primary if workspace.primary in platforms else platforms[0]
    base_target: Target | None = ctx.attr.base
    base_input: File | None = None
    inputs: list[File] = []
    runtime: PythonRuntimeInfo | None = None
    base_layers: dict[Platform, tuple[Layer, ...]] = {p: () for p in platforms}
    # A bare layout (or a pull) says its platforms only when read: the action checks them.
    check_base_platform = len(platforms) > 1
    if base_target is not None:
        info = base_target.get(ImageInfo)
        if info is not None:
            base_input = info.layout
            inputs.append(info.layout)
            runtime = info.runtime
            if info.platforms:
                check_base_platform = False
                for platform in platforms:
                    found = info.for_platform(str(platform)) if str(platform) in info.platforms else None
                    if found is None:
                        ctx.fail(f"the base {base_target.label} was not built for {platform} (it has "
                                 f"{', '.join(info.platforms)})", attr="base",
                                 hint=f"add \"{platform}\" to the platforms of {base_target.label}")
                    base_layers[platform] = found
            else:
                base_layers = {p: tuple(info.layers) for p in platforms}
        else:
            files = ctx.files.base
            dirs = [f for f in files if f.is_directory]
            index = sorted((f for f in files if f.basename == "index.json"), key=lambda f: len(f.path))
            if dirs:
                base_input = dirs[0]
            elif index:
                base_input = index[0]
            else:
                ctx.fail(f"{base_target.label} is not an image and holds no OCI layout (no index.json among "
                         f"{len(files)} files)", attr="base",
                         hint="use an image target, or a filegroup of an OCI layout's files")
            inputs += files
    layers: dict[Platform, list[Layer]] = {p: [] for p in platforms}
    binaries: list[tuple[Target, PyBinaryInfo, PyInfo]] = []
    override = _interpreter_override(ctx)
    for target in ctx.attr.layers:
        runtime = override or target.get(PythonRuntimeInfo) or runtime
        if PyBinaryInfo in target:
            binary, pyinfo = target[PyBinaryInfo], target.get(PyInfo) or PyInfo()
            binaries.append((target, binary, pyinfo))
            per_platform = _python_layers(ctx, target, pyinfo, runtime, len(ctx.attr.layers), compression, level,
                                          epoch, platforms, primary, workspace)
            for platform in platforms:
                layers[platform] += per_platform[platform]
            continue
        provider: LayerInfo | ImageInfo | None = target.get(LayerInfo) or target.get(ImageInfo)
        if provider is None:
            ctx.fail(f"{target.label} provides no layers", attr="layers",
                     hint="layers takes layer, deb_packages, py_binary or image targets")
        if isinstance(provider, ImageInfo):
            runtime = override or provider.runtime or runtime
        for platform in platforms:
            if isinstance(provider, ImageInfo) and provider.platforms and str(platform) not in provider.platforms:
                chosen = None
            else:
                chosen = provider.for_platform(str(platform))
            if chosen is None:
                ctx.fail(f"{target.label} has no layers for {platform}", attr="layers",
                         hint=f"add {platform} to [platforms] locks of WORKSPACE.toml and run "
                              "./pbuild lock --python --debian (an image target: add it to its platforms)")
            layers[platform] += chosen
    for platform in platforms:
        for layer in layers[platform] + list(base_layers[platform]):
            inputs += [layer.blob, layer.meta]
    entrypoint: list[str] | None = list(ctx.attr.entrypoint) or None
    cmd: list[str] | None = list(ctx.attr.cmd) or None
    env = dict(ctx.attr.env)
    workdir = ctx.attr.workdir or None
    if binaries:
        _, binary, _ = binaries[-1]
        assert runtime is not None  # _python_layers checked it
        if entrypoint is None:
            entrypoint = _python_entrypoint(ctx, runtime.interpreter, binary)
            if cmd is None and binary.args:
                cmd = list(binary.args)
        env = {"PYTHONPATH": ctx.attr.app_root, "PYTHONDONTWRITEBYTECODE": "1", **dict(binary.env), **env}
        workdir = workdir or ctx.attr.app_root
    if entrypoint is None and cmd is None and base_target is None:
        ctx.fail("an image needs an entrypoint or a cmd", attr=None,
                 hint="set entrypoint = [...] or cmd = [...], or put a py_binary in layers")
    tags = list(ctx.attr.repo_tags) or [f"{ctx.package}/{name}:latest" if ctx.package else f"{name}:latest"]
    out_layout = ctx.declare_directory(f"{name}/oci")
    out_tar = ctx.declare_file(f"{name}/image.tar")
    out_digest = ctx.declare_file(f"{name}/digest")
    multi = len(platforms) > 1
    sboms = {p: ctx.declare_file(f"{name}/sbom.spdx.json" if p == primary else f"{name}/sbom.{p.slug}.spdx.json")
             for p in platforms}
    if multi:  # every platform's document under its own name, the primary's under both
        sboms[primary] = ctx.declare_file(f"{name}/sbom.{primary.slug}.spdx.json")
        primary_sbom = ctx.declare_file(f"{name}/sbom.spdx.json")
    else:
        primary_sbom = sboms[primary]
    images = [{
        "platform": str(p),
        "base": base_input.path if base_input else None,
        "base_is_source": bool(base_input and base_input.is_source),
        "check_base_platform": check_base_platform,
        "layers": [{"blob": layer.blob.path, "meta": layer.meta.path, "created_by": layer.created_by}
                   for layer in layers[p]],
        "contents": [layer.meta.path for layer in (*base_layers[p], *layers[p])],
        "sbom": sboms[p].path,
    } for p in platforms]
    outputs = [out_layout, out_tar, out_digest, *(sboms[p] for p in platforms)]
    if multi:
        outputs.append(primary_sbom)
    ctx.actions.call(
        actions.write_image,
        version=IMAGE_VERSION,
        params={
            "images": images,
            "index": multi,
            "primary": platforms.index(primary),
            "primary_sbom": primary_sbom.path if multi else None,
            "sbom_artifact": ctx.attr.sbom,
            "image_name": tags[0],
            "tool_version": sbom.tool_version(),
            "config": {"entrypoint": entrypoint, "cmd": cmd, "env": env, "workdir": workdir,
                       "user": ctx.attr.user or None, "labels": dict(ctx.attr.labels),
                       "exposed_ports": list(ctx.attr.exposed_ports)},
            "annotations": dict(ctx.attr.annotations),
            "tags": tags,
            "epoch": epoch,
            "layout": out_layout.path,
            "tarball": out_tar.path,
            "digest": out_digest.path,
        },
        inputs=inputs,
        outputs=tuple(outputs),
        mnemonic="Image",
    )
    every = {p: tuple(base_layers[p]) + tuple(layers[p]) for p in platforms}
    providers: list[Provider] = [
        DefaultInfo(files=tuple(outputs)),
        ImageInfo(out_layout, out_digest, out_tar, tuple(tags), every[primary], runtime,
                  platforms=tuple(str(p) for p in platforms),
                  platform_layers=tuple((str(p), every[p]) for p in platforms), sbom=primary_sbom),
    ]
    # An image is a toolchain when pbuild knows all its layers (not over a bare OCI layout or a pull).
    if base_target is None or ToolchainInfo in base_target:
        providers.append(ToolchainInfo(Toolchain(
            ctx.label, tuple(ToolchainLayer(layer.blob, layer.meta) for layer in every[primary]),
            python=runtime.interpreter if runtime else "", python_version=runtime.version if runtime else "")))
    return providers


def _python_entrypoint(ctx: RuleContext, interpreter: str, binary: PyBinaryInfo) -> list[str]:
    if binary.main_module:
        return [interpreter, "-m", binary.main_module]
    if binary.entry_point:
        module, _, function = binary.entry_point.partition(":")
        return [interpreter, "-c", f"import sys; from {module} import {function} as f; sys.exit(f())"]
    ctx.fail("the py_binary in layers has neither main_module nor entry_point", attr="layers")


def group_wheels(wheels_: Sequence[_T], budget: int) -> list[list[_T]]:
    """One group per wheel while ``budget`` layers last; past it, the remaining wheels share the last one.

    Wheels come sorted by name, so adding a wheel moves at most the shared layer.
    """
    budget = max(1, budget)
    groups = [[w] for w in wheels_]
    if len(groups) > budget:
        groups = groups[:budget - 1] + [[w for g in groups[budget - 1:] for w in g]]
    return groups


def _interpreter_override(ctx: RuleContext) -> PythonRuntimeInfo | None:
    """The runtime named by the ``interpreter`` attribute, if set."""
    if not ctx.attr.interpreter:
        return None
    version = re.search(r"python(\d+\.\d+)$", ctx.attr.interpreter)
    if not version:
        ctx.fail(f"cannot tell the Python version of {ctx.attr.interpreter!r}", attr="interpreter",
                 hint="name the interpreter like /usr/bin/python3.11")
    v = version.group(1)
    return PythonRuntimeInfo(ctx.attr.interpreter, v, f"/usr/local/lib/python{v}/dist-packages")


def _image_platforms(ctx: RuleContext) -> tuple[WorkspacePlatforms, list[Platform]]:
    """The workspace's ``[platforms]`` and the image's platforms (its attribute, else ``images``),
    each checked to be one the locks cover."""
    workspace = workspace_platforms(ctx)
    if not ctx.attr.platforms:
        return workspace, list(workspace.images)
    platforms: list[Platform] = []
    for text in ctx.attr.platforms:
        try:
            platform = Platform.parse(text)
        except PlatformError as exc:
            ctx.fail(exc.message, attr="platforms", hint=exc.hint)
        if platform in platforms:
            ctx.fail(f"platforms names {platform} twice", attr="platforms")
        if not workspace.covers(platform):
            ctx.fail(f"platform {platform} is not covered by the locks ([platforms] locks of WORKSPACE.toml: "
                     f"{', '.join(map(str, workspace.locks))})", attr="platforms",
                     hint="add it to [platforms] locks and run ./pbuild lock --python --debian")
        platforms.append(platform)
    return workspace, platforms


@dataclass(frozen=True)
class _WheelFile:
    """The file one wheel of a group is on one platform."""

    filename: str
    sha256: str
    file: File


def _wheel_file(ctx: RuleContext, wheel: Wheel, platform: Platform, workspace: WorkspacePlatforms) -> _WheelFile:
    build = wheel.for_platform(str(platform))
    if build is not None:
        return _WheelFile(build.filename, build.sha256, build.file)
    if not wheel.builds and platform == workspace.primary:
        return _WheelFile(wheel.filename, wheel.sha256, wheel.file)  # a lock of the primary platform only
    ctx.fail(f"the lock has no wheel of {wheel.name} {wheel.version} for {platform}", attr="layers",
             hint="add the platform to [platforms] locks of WORKSPACE.toml and run ./pbuild lock --python")


def _python_layers(ctx: RuleContext, target: Target, pyinfo: PyInfo, runtime: PythonRuntimeInfo | None,
                   other_layers: int, compression: str, level: int | None, epoch: int,
                   platforms: Sequence[Platform], primary: Platform,
                   workspace: WorkspacePlatforms) -> dict[Platform, list[Layer]]:
    """Per platform: one layer per locked wheel (grouped past the budget) and one app layer for a
    py_binary. A group whose files are the primary's reuses its layer; the app layer is shared."""
    if runtime is None:
        ctx.fail(f"{target.label} is a py_binary, but no layer before it provides a Python interpreter",
                 attr="layers", hint="put a deb_packages target with python3.X-minimal (e.g. "
                                     "//third_party/debian:python3) before it, or set interpreter")
    name = ctx.label.name
    wheel_list = sorted(set(pyinfo.wheels), key=lambda w: (w.name, w.version))
    files = {p: [_wheel_file(ctx, w, p, workspace) for w in wheel_list] for p in platforms}
    for wheel, file in zip(wheel_list, files[primary], strict=True):
        _check_wheel_python(ctx, wheel, file.filename, runtime.version)
    groups = group_wheels(list(range(len(wheel_list))), ctx.attr.max_layers - other_layers - 1)
    suffix = _SUFFIX[compression]
    common = {"site_packages": runtime.site_packages, "interpreter": runtime.interpreter,
              "python_version": runtime.version, "compression": compression, "level": level, "epoch": epoch,
              # The bytecode is compiled by the runtime's toolchain, whose digests join the key;
              # without one, by the host's interpreter, whose identity must be in the key.
              "bytecode": "toolchain" if runtime.toolchain else pyc.host_bytecode_key(runtime.version),
              "bytecode_mode": ctx.attr.bytecode}
    layers: dict[Platform, list[Layer]] = {p: [] for p in platforms}
    for group in groups:
        first = wheel_list[group[0]]
        stem = first.name if len(group) == 1 else f"{first.name}-and-{len(group) - 1}-more"
        created_by = "pbuild wheel " + " ".join(f"{wheel_list[i].name}=={wheel_list[i].version}" for i in group)
        declared: dict[tuple[str, ...], Layer] = {}
        # The primary platform first: its layer keeps today's path, and others reuse it when equal.
        for platform in sorted(platforms, key=lambda p: p != primary):
            chosen = [files[platform][i] for i in group]
            same = tuple(f.sha256 for f in chosen)
            if same in declared:
                layers[platform].append(declared[same])
                continue
            folder = f"{name}/layers" if platform == primary else f"{name}/{platform.slug}/layers"
            blob = ctx.declare_file(f"{folder}/wheel-{stem}{suffix}")
            meta = ctx.declare_file(f"{folder}/wheel-{stem}.json")
            ctx.actions.call(
                actions.write_wheel_layer,
                version=LAYER_VERSION,
                params={**common, "wheels": [f.file.path for f in chosen], "blob": blob.path, "meta": meta.path},
                inputs=[f.file for f in chosen],
                outputs=(blob, meta),
                mnemonic="WheelLayer",
                toolchain=runtime.toolchain,
                progress=f"installing {', '.join(f.filename for f in chosen)}",
            )
            declared[same] = Layer(blob, meta, created_by)
            layers[platform].append(declared[same])
    blob = ctx.declare_file(f"{name}/layers/app-{target.label.name}{suffix}")
    meta = ctx.declare_file(f"{name}/layers/app-{target.label.name}.json")
    sources = sorted(pyinfo.sources, key=lambda s: s.import_path)
    ctx.actions.call(
        actions.write_app_layer,
        version=LAYER_VERSION,
        params={**common, "root": ctx.attr.app_root,
                "sources": [{"input": s.file.path, "import_path": s.import_path} for s in sources],
                "blob": blob.path, "meta": meta.path},
        inputs=[s.file for s in sources],
        outputs=(blob, meta),
        mnemonic="AppLayer",
        toolchain=runtime.toolchain,
    )
    app = Layer(blob, meta, f"pbuild py_binary {target.label}")
    for platform in platforms:
        layers[platform].append(app)
    return layers
