"""The ``deb_packages`` rule: pinned Debian packages (and their closure) as one image layer."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pbuild.engine.api import (
    ActionIO,
    DefaultInfo,
    File,
    Provider,
    RuleContext,
    Toolchain,
    ToolchainInfo,
    ToolchainLayer,
    attr,
    rule,
)
from pbuild.engine.errors import HashMismatch
from pbuild.lib import determinism
from pbuild.rules.debian import deb, sources
from pbuild.rules.debian.lock import (
    DEFAULT_ARCH,
    DEFAULT_COMPONENTS,
    DEFAULT_SUITES,
    LockedPackage,
    Request,
    read_locked_target,
)
from pbuild.rules.debian.python import TreePython, configure_python
from pbuild.rules.oci.isolate import run_isolated
from pbuild.rules.oci.layerwriter import write_layer
from pbuild.rules.oci.providers import Layer, LayerInfo, PythonRuntimeInfo
from pbuild.rules.oci.rules import FAST_GZIP_LEVEL, compression_attrs, effective_level

_PYTHON_MINIMAL = re.compile(r"^python3\.(\d+)-minimal$")


def fetch_deb(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Download one pinned .deb from the suite's mirror and verify its sha256 (and size)."""
    import urllib.error
    import urllib.request

    from pbuild.rules.debian.archive import TIMEOUT_S, ArchiveError

    source = sources.mirror_for_suite(params["suite"])
    url = f"{source.uri}/{params['filename']}"
    out = io.output_path(params["output"])
    sha = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(out, "wb") as handle:
            while block := response.read(1 << 20):
                sha.update(block)
                size += len(block)
                handle.write(block)
    except (urllib.error.URLError, OSError) as exc:
        raise ArchiveError(f"cannot fetch {url}: {exc}",
                           hint=f"check the apt mirror and the network, or set {sources.MIRROR_ENV}") from None
    check_deb_hash(params["filename"], params["sha256"], sha.hexdigest(), size, params["size"])


def check_deb_hash(filename: str, expected: str, got: str, size: int, expected_size: int) -> None:
    """A .deb whose bytes do not match the lock is an error naming the file and both hashes."""
    if got != expected:
        raise HashMismatch(
            f"{filename.rsplit('/', 1)[-1]} does not match the Debian lock: expected sha256 {expected}, "
            f"got {got} ({size} bytes, locked {expected_size})",
            hint="the mirror served other bytes than it did when the lock was made; "
                 "if the package legitimately changed, run `./pbuild lock --debian`",
        )


def write_deb_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Unpack every .deb of the closure into one root-filesystem layer (blob + sidecar JSON).

    Runs in its own interpreter (see :mod:`pbuild.rules.oci.isolate`).
    """
    run_isolated(_write_deb_layer, io, params, (params["blob"], params["meta"]))


def _write_deb_layer(io: ActionIO, params: Mapping[str, Any]) -> None:
    paths = [io.input_path(p) for p in params["debs"]]

    def load(path: str) -> deb.DebContents:
        with open(path, "rb") as handle:
            return deb.read_deb(handle.read(), name=os.path.basename(path))

    # xz decompression releases the GIL, so packages unpack in parallel.
    with ThreadPoolExecutor(max(1, io.jobs)) as pool:
        debs = list(pool.map(load, paths))
    entries = deb.rootfs_entries(debs, codename=params["codename"], version=params["release"],
                                 exclude=params["exclude"])
    if params.get("python"):
        entries = configure_python(io, entries, TreePython(**params["python"]), jobs=io.jobs)
    digests = write_layer(entries, io.output_path(params["blob"]), compression=params["compression"],
                          level=params["level"], mtime=params["epoch"], jobs=io.jobs)
    with open(io.output_path(params["meta"]), "wb") as handle:
        handle.write(determinism.canonical_json(digests.to_json()))


def python_runtime(packages: Sequence[LockedPackage]) -> PythonRuntimeInfo | None:
    """The interpreter a closure provides, from its ``python3.X-minimal`` package."""
    for package in packages:
        match = _PYTHON_MINIMAL.match(package.name)
        if match:
            version = f"3.{match.group(1)}"
            return PythonRuntimeInfo(f"/usr/bin/python{version}", version,
                                     f"/usr/local/lib/python{version}/dist-packages")
    return None


def layer_toolchain(ctx: RuleContext, blob: File, meta: File,
                    runtime: PythonRuntimeInfo | None) -> Toolchain:
    """The toolchain this target's layer makes (its interpreter, if the closure has one)."""
    return Toolchain(ctx.label, (ToolchainLayer(blob, meta),), python=runtime.interpreter if runtime else "",
                     python_version=runtime.version if runtime else "")


@rule(
    "deb_packages",
    attrs={
        "packages": attr.string_list("Debian binary packages to install; their Depends/Pre-Depends closure "
                                     "is resolved by `pbuild lock --debian`.", required=True),
        "suites": attr.string_list("Suites to take packages from, first one first (e.g. bookworm, "
                                   "bookworm-updates); the highest version wins.", default=DEFAULT_SUITES),
        "architecture": attr.string("Debian architecture of the packages.", default=DEFAULT_ARCH),
        "components": attr.string_list("Archive components to search.", default=DEFAULT_COMPONENTS),
        "exclude": attr.string_list("Paths left out of the layer (gitignore-style, `!` re-includes); the "
                                    "default drops manuals, info pages, translations and docs except "
                                    "copyright files, as debian:slim does. Set [] to keep everything.",
                                    default=deb.SLIM_EXCLUDES),
        **compression_attrs(FAST_GZIP_LEVEL),
    },
    doc="Pinned Debian packages and their dependency closure, fetched from the host's apt mirror "
        "(verified against `debian.lock.json`) and unpacked without dpkg into one merged-/usr layer "
        "with a dpkg status database, /etc/passwd, /etc/group, /etc/os-release, /tmp and /root. A closure "
        "with a CPython (python3.X-minimal) is left as Debian's maintainer scripts would leave it: its "
        "standard library and dist-packages byte-compiled by its own interpreter (hash-based .pyc) and "
        "/usr/bin/python3.",
)
def _deb_packages(ctx: RuleContext) -> list[Provider]:
    request = Request(
        packages=tuple(ctx.attr.packages),
        suites=tuple(ctx.attr.suites),
        architecture=ctx.attr.architecture,
        components=tuple(ctx.attr.components),
    )
    locked = read_locked_target(ctx.workspace_root, ctx.package, ctx.label.name, request,
                                location=ctx.location("packages"), label=ctx.label)
    name = ctx.label.name
    debs = []
    for package in locked.packages:
        output = ctx.declare_file(f"{name}/debs/{package.basename}")
        ctx.actions.call(
            fetch_deb,
            version="1",
            params={"filename": package.filename, "sha256": package.sha256, "size": package.size,
                    "suite": package.suite, "output": output.path},
            inputs=(),
            outputs=(output,),
            mnemonic="DebFetch",
            network=True,
            progress=f"fetching {package.name} {package.version}",
        )
        debs.append(output)
    blob = ctx.declare_file(f"{name}/layer.tar" + {"gzip": ".gz", "zstd": ".zst", "none": ""}[ctx.attr.compression])
    meta = ctx.declare_file(f"{name}/layer.json")
    runtime = python_runtime(locked.packages)
    if runtime is not None:
        # Wheel and app layers above are byte-compiled on this layer's tree, by this interpreter.
        runtime = replace(runtime, toolchain=layer_toolchain(ctx, blob, meta, runtime))
    ctx.actions.call(
        write_deb_layer,
        version="3",
        params={
            "debs": [d.path for d in debs],
            # The closure's CPython byte-compiles its own modules (rules/debian/python.py).
            "python": {"interpreter": runtime.interpreter, "version": runtime.version} if runtime else None,
            "codename": locked.os_release.get("codename", request.suites[0]),
            "release": locked.os_release.get("version", ""),
            "exclude": list(ctx.attr.exclude),
            "compression": ctx.attr.compression,
            "level": effective_level(ctx.attr.compression, ctx.attr.compression_level, FAST_GZIP_LEVEL),
            "epoch": determinism.source_date_epoch(),
            "blob": blob.path,
            "meta": meta.path,
        },
        inputs=tuple(debs),
        outputs=(blob, meta),
        mnemonic="DebLayer",
    )
    providers: list[Provider] = [
        DefaultInfo(files=(blob, meta)),
        LayerInfo((Layer(blob, meta, f"pbuild deb_packages {ctx.label}: {', '.join(sorted(request.packages))}"),)),
    ]
    if runtime is not None:
        providers.append(runtime)
    providers.append(ToolchainInfo(layer_toolchain(ctx, blob, meta, runtime)))
    return providers
