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
from pbuild.lib.platforms import Platform
from pbuild.rules.debian import deb, sources
from pbuild.rules.debian.contents import package_contents
from pbuild.rules.debian.lock import (
    ARCHITECTURE_HINT,
    DEFAULT_COMPONENTS,
    DEFAULT_SUITES,
    LockedPackage,
    LockedTarget,
    Request,
    read_locked_target,
)
from pbuild.rules.debian.python import TreePython, configure_python
from pbuild.rules.oci.isolate import run_isolated
from pbuild.rules.oci.layerwriter import write_layer
from pbuild.rules.oci.providers import Layer, LayerInfo, PythonRuntimeInfo
from pbuild.rules.oci.rules import FAST_GZIP_LEVEL, compression_attrs, effective_level
from pbuild.rules.platforms import workspace_platforms

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

    # xz decompression releases the GIL, so packages unpack in parallel; the largest start first
    # (libc6, python3.11-minimal: ~0.2 s each), so no thread is left with one of them at the end.
    # The closure's order is kept for everything after.
    with ThreadPoolExecutor(max(1, io.jobs)) as pool:
        futures = {path: pool.submit(load, path) for path in sorted(paths, key=os.path.getsize, reverse=True)}
        debs = [futures[path].result() for path in paths]
    entries = deb.rootfs_entries(debs, codename=params["codename"], version=params["release"],
                                 exclude=params["exclude"])
    if params.get("python"):
        python = params["python"]
        # on_toolchain: another platform's tree, whose interpreter cannot run here; the action's
        # toolchain (the primary platform's layer, same CPython X.Y) compiles its bytecode.
        entries = configure_python(io, entries, TreePython(python["interpreter"], python["version"]), jobs=io.jobs,
                                   on_toolchain=bool(python.get("on_toolchain")))
    digests = write_layer(entries, io.output_path(params["blob"]), compression=params["compression"],
                          level=params["level"], mtime=params["epoch"], jobs=io.jobs)
    sidecar = digests.to_json()
    sidecar["contents"] = {"packages": package_contents(debs, params["packages"]), "files": []}
    with open(io.output_path(params["meta"]), "wb") as handle:
        handle.write(determinism.canonical_json(sidecar))


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
        "architecture": attr.string("Not supported any more: the Debian architectures are those of the "
                                    "`[platforms] locks` of WORKSPACE.toml; setting it is an error.", default=""),
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
        "standard library and dist-packages byte-compiled (hash-based .pyc) and /usr/bin/python3. "
        "One layer per `[platforms] locks` platform of WORKSPACE.toml: the primary platform's at "
        "`<name>/layer.tar.gz`, the others' at `<name>/<os>-<arch>/layer.tar.gz`; every platform's "
        "bytecode is compiled by the primary platform's interpreter, so no emulator is needed. The "
        "layer's `layer.json` lists each package with its version, sha256 and SPDX licence (`contents`).",
)
def _deb_packages(ctx: RuleContext) -> list[Provider]:
    if ctx.attr.architecture:
        ctx.fail("deb_packages has no 'architecture' any more", attr="architecture", hint=ARCHITECTURE_HINT)
    platforms = workspace_platforms(ctx)
    request = Request(
        packages=tuple(ctx.attr.packages),
        suites=tuple(ctx.attr.suites),
        platforms=platforms.locks,
        components=tuple(ctx.attr.components),
    )
    locked = read_locked_target(ctx.workspace_root, ctx.package, ctx.label.name, request,
                                location=ctx.location("packages"), label=ctx.label)
    name = ctx.label.name
    primary = platforms.primary
    # The primary platform first: its fetches take today's paths, and its layer is the toolchain
    # that compiles the others' bytecode.
    order = [primary, *(p for p in platforms.locks if p != primary)]
    runtimes = {p: python_runtime(locked.packages_for(p)) for p in order}
    _check_same_python(ctx, runtimes, primary)
    fetched: dict[tuple[str, str], File] = {}
    built: dict[Platform, Layer] = {}
    primary_toolchain: Toolchain | None = None
    for platform in order:
        packages = locked.packages_for(platform)
        prefix = name if platform == primary else f"{name}/{platform.slug}"
        debs = [_fetch(ctx, package, prefix, fetched) for package in packages]
        blob = ctx.declare_file(f"{prefix}/layer.tar" + {"gzip": ".gz", "zstd": ".zst", "none": ""}[ctx.attr.compression])
        meta = ctx.declare_file(f"{prefix}/layer.json")
        if platform == primary:
            primary_toolchain = layer_toolchain(ctx, blob, meta, runtimes[primary])
        # Another platform's CPython cannot run here: the primary layer's compiles its bytecode.
        on = None if platform == primary or runtimes[platform] is None else primary_toolchain
        _declare_layer(ctx, locked, packages, debs, blob, meta, runtimes[platform], compile_on=on,
                       progress="" if platform == primary else f"DebLayer {ctx.label} for {platform}")
        built[platform] = Layer(blob, meta, f"pbuild deb_packages {ctx.label}: {', '.join(sorted(request.packages))}")
    assert primary_toolchain is not None
    providers: list[Provider] = [
        DefaultInfo(files=tuple(f for p in order for f in (built[p].blob, built[p].meta))),
        # Filled for one platform too: a Debian layer is never platform-independent.
        LayerInfo((built[primary],), platform_layers=tuple((str(p), (built[p],)) for p in platforms.locks)),
    ]
    primary_runtime = runtimes[primary]
    if primary_runtime is not None:
        # Wheel and app layers above are byte-compiled on the primary layer's tree, by its interpreter.
        providers.append(replace(primary_runtime, toolchain=primary_toolchain))
    providers.append(ToolchainInfo(primary_toolchain))
    return providers


def _declare_layer(ctx: RuleContext, locked: LockedTarget, packages: Sequence[LockedPackage], debs: Sequence[File],
                   blob: File, meta: File, runtime: PythonRuntimeInfo | None, *, compile_on: Toolchain | None,
                   progress: str) -> None:
    """The action that unpacks one platform's closure into its layer; with ``compile_on`` that
    toolchain's interpreter (the same CPython X.Y) compiles the layer's bytecode."""
    python: dict[str, Any] | None = None
    if runtime is not None:
        python = {"interpreter": runtime.interpreter, "version": runtime.version}
        if compile_on is not None:
            python["on_toolchain"] = True
    ctx.actions.call(
        write_deb_layer,
        version="4",
        params={
            "debs": [d.path for d in debs],
            # The closure's CPython byte-compiles its own modules (rules/debian/python.py).
            "python": python,
            "packages": [{"name": p.name, "version": p.version, "architecture": p.architecture,
                          "filename": p.basename, "sha256": p.sha256} for p in packages],
            "codename": locked.os_release.get("codename", locked.request.get("suites", DEFAULT_SUITES)[0]),
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
        toolchain=compile_on,
        progress=progress,
    )


def _fetch(ctx: RuleContext, package: LockedPackage, prefix: str, fetched: dict[tuple[str, str], File]) -> File:
    """The fetch action of one .deb; a file another platform already fetches (``Architecture: all``) is shared."""
    key = (package.basename, package.sha256)
    if key in fetched:
        return fetched[key]
    output = ctx.declare_file(f"{prefix}/debs/{package.basename}")
    ctx.actions.call(
        fetch_deb,
        version="1",
        params={"filename": package.filename, "sha256": package.sha256, "size": package.size,
                "suite": package.suite, "output": output.path},
        inputs=(),
        outputs=(output,),
        mnemonic="DebFetch",
        network=True,
        progress=f"fetching {package.name} {package.version}" + (
            "" if package.architecture in ("all", "") or prefix == ctx.label.name else f" ({package.architecture})"),
    )
    fetched[key] = output
    return output


def _check_same_python(ctx: RuleContext, runtimes: Mapping[Platform, PythonRuntimeInfo | None],
                       primary: Platform) -> None:
    """Every platform's closure must have the primary's CPython X.Y: its interpreter compiles their bytecode."""
    want = runtimes[primary]
    differ = [f"{p}: {'python' + r.version if r else 'no CPython'}" for p, r in runtimes.items()
              if (r.version if r else None) != (want.version if want else None)]
    if differ:
        ctx.fail(f"the closures of the lock platforms have different CPythons ({primary}: "
                 f"{'python' + want.version if want else 'no CPython'}; {'; '.join(differ)})",
                 attr="packages",
                 hint="the primary platform's interpreter compiles every platform's bytecode, so each closure must "
                      "have the same python3.X-minimal; pin it in packages, then run ./pbuild lock --debian")
