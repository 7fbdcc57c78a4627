"""The commands beyond ``build``: run, test, query, clean, lock, push, images."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pbuild.engine.api import OUT_DIR, Action, DefaultInfo, File, RunInfo
from pbuild.engine.build import (
    OUT_MARKER,
    BuildRequest,
    analyze,
    execute,
    open_session,
    test_actions,
)
from pbuild.engine.errors import EXIT_BUILD_FAILED, PbuildError
from pbuild.engine.events import Reporter
from pbuild.engine.scheduler import ActionStatus
from pbuild.engine.store import LocalStore
from pbuild.engine.toolchains import needed_files
from pbuild.engine.workspace import default_cache_dir, find_workspace
from pbuild.tools.fstree import remove_tree


def _image_info_type() -> Any:
    try:
        from pbuild.rules.oci.providers import ImageInfo
    except ImportError:
        return None
    return ImageInfo


def _run_files(analyzed: Any) -> list[File]:
    """What running needs: RunInfo's files and the runfiles; an image's outputs; else all files."""
    files: list[File] = []
    image_type = _image_info_type()
    for target in analyzed.targets.values():
        run_info = target.get(RunInfo)
        if run_info is not None and (image_type is None or image_type not in target):
            info = target.get(DefaultInfo)
            files.extend(a for a in run_info.argv if isinstance(a, File))
            files.extend(info.runfiles if info else ())
            files.extend(run_info.toolchain.files if run_info.toolchain else ())
        else:
            files.extend(target.files)
    return files


def _build_one(request: BuildRequest, target: str) -> tuple[Any, Any, str, Any]:
    """Build one target; returns (session, its label, its rule's name, its providers as a Target)."""
    from pbuild.engine.build import build

    session, analyzed, _ = build(request)
    if len(analyzed.labels) != 1:
        raise PbuildError(f"{target} names {len(analyzed.labels)} targets; name exactly one",
                          hint="use a label, not a pattern")
    label = analyzed.labels[0]
    return session, label, analyzed.rule_names[label], analyzed.targets[label]


def run_plan(root: str, label: Any, rule_name: str, providers: Any, tree: str | None = None) -> tuple[Any, ...]:
    """What ``pbuild run`` starts for a built target (see engine/launch.py); ``tree`` is the
    unpacked root of its toolchain, if it has one."""
    image_type = _image_info_type()
    if image_type is not None and image_type in providers:
        return ("image", os.path.join(root, providers[image_type].layout.path))
    run_info = providers.get(RunInfo)
    if run_info is None:
        raise PbuildError(f"{label} (a {rule_name}) cannot be run",
                          label=label, hint="pbuild run takes a py_binary, an image, or oci:PATH")
    argv = [os.path.join(root, a.path) if isinstance(a, File) else a for a in run_info.argv]
    if run_info.toolchain is not None:
        assert tree is not None
        return ("toolchain", argv, dict(run_info.env), run_info.keep_dashdash, root, tree,
                str(run_info.toolchain.label))
    return ("exec", argv, dict(run_info.env), run_info.keep_dashdash, root)


def run_target(request: BuildRequest, target: str, extra: Sequence[str], stamp: str | None = None) -> int:
    """``pbuild run TARGET ARGS``: build what running needs, then start it (engine/launch.py)."""
    from pbuild.engine import cli, uptodate
    from pbuild.engine.build import build
    from pbuild.engine.launch import execute_plan

    if request.quiet is False and not sys.stderr.isatty():
        request = dataclasses.replace(request, quiet=True)
    trees: list[str] = []

    def unpack_toolchain(analyzed: Any, executor: Any) -> None:
        # A program on a toolchain starts on its tree: made now, and recorded in the stamp, so a
        # no-op run never starts on a tree that was removed since.
        for providers in analyzed.targets.values():
            run_info = providers.get(RunInfo)
            if run_info is not None and run_info.toolchain is not None:
                trees.append(executor.toolchain_tree(run_info.toolchain))
                executor.recorder.directory(trees[-1])

    session, analyzed, result = build(request, only_files=_run_files, after=unpack_toolchain)
    if len(analyzed.labels) != 1:
        raise PbuildError(f"{target} names {len(analyzed.labels)} targets; name exactly one",
                          hint="use a label, not a pattern")
    label = analyzed.labels[0]
    plan = run_plan(session.workspace.root, label, analyzed.rule_names[label], analyzed.targets[label],
                    trees[-1] if trees else None)
    if stamp is not None:
        outputs = [os.path.join(session.workspace.root, o.path) for res in result.results for o in res.outputs]
        uptodate.write_stamp(stamp, session.loader.recorder, outputs, result.events, extra=plan)
    return execute_plan(plan, extra, user_umask=cli.USER_UMASK)


def run_tests(request: BuildRequest, *, no_cache: bool) -> int:
    """``pbuild test``: build test targets, run each test in the sandbox, print one line per target."""
    reporter = Reporter(event_file=request.event_file, quiet=True, interactive=False)
    session = open_session(request, warn=reporter.message)
    lines: list[str] = []
    try:
        labels, graph = analyze(session, request.patterns, request.cwd)
        tests = test_actions(graph, labels)
        if not tests:
            raise PbuildError(f"no test targets in {' '.join(request.patterns)}",
                              hint="test targets use rules such as py_test")
        needed = [a for _, a in tests]
        build_actions: list[Action] = graph.actions_for([f for a in needed for f in needed_files(a)])
        result, _ = execute(session, [*build_actions, *needed], request, reporter=reporter,
                            no_cache_mnemonics=frozenset({"TestRunner"}) if no_cache else frozenset(),
                            keep_going=True)
    finally:
        summary = reporter.finish()
        session.close()
    failed = 0
    for label, action in tests:
        status = result.status_of(action)
        if status in (ActionStatus.CACHED, ActionStatus.REMOTE_CACHED):
            lines.append(f"{label}  PASSED (cached)")
        elif status is ActionStatus.EXECUTED:
            lines.append(f"{label}  PASSED")
        else:
            failed += 1
            failure = result.failure_of(action)
            lines.append(f"{label}  FAILED" if failure or status is ActionStatus.FAILED
                         else f"{label}  NO STATUS (build failed)")
            if failure is not None:
                lines.append(failure.error.message.split("\n", 1)[-1])
    build_failures = [f for f in result.failures if f.action.mnemonic != "TestRunner"]
    for line in lines:
        print(line)
    passed = len(tests) - failed
    print(f"{passed} passed, {failed} failed ({summary.line()})")
    if build_failures:
        for failure in build_failures:
            print(failure.error.render(), file=sys.stderr)
    return EXIT_BUILD_FAILED if failed or build_failures else 0


def query_command(expr: str, *, output: str, workspace: str | None, cache_dir: str | None) -> int:
    from pbuild.engine.query import TargetGraph, evaluate, render

    request = BuildRequest(patterns=(), workspace=workspace, cache_dir=cache_dir)
    session = open_session(request)
    graph = TargetGraph(session.loader, session.analyzer)
    result = evaluate(expr, graph, request.cwd)
    print(render(result, graph, output), end="")
    return 0


def clean(*, workspace: str | None, cache_dir: str | None, expunge: bool) -> int:
    ws = find_workspace(os.getcwd(), workspace)
    out = os.path.join(ws.root, OUT_DIR)
    if os.path.islink(out):
        # A symlinked output folder (to scratch space, say): empty its target, keep the link, but
        # only if pbuild marked it as its own (a link to ~ by mistake must not cost a home folder).
        target = os.path.realpath(out)
        if not os.path.exists(os.path.join(target, OUT_MARKER)):
            raise PbuildError(f"{OUT_DIR} links to {target}, which pbuild did not create its outputs in",
                              hint=f"remove the link by hand, or create {OUT_DIR}/{OUT_MARKER} if the folder is pbuild's")
        doomed = [os.path.join(target, name) for name in os.listdir(target)]
    else:
        doomed = [out]
    try:
        for path in doomed:
            remove_tree(path)
        if expunge:
            LocalStore(os.path.abspath(cache_dir) if cache_dir else default_cache_dir()).expunge()
    except OSError as exc:
        raise PbuildError(f"could not remove {exc.filename}: {exc.strerror}",
                          hint="check the permissions of that path (and whether something is mounted there)") from None
    return 0


def lock(*, workspace: str | None, python: bool, debian: bool, mirror: str | None, tools: bool = False) -> int:
    ws = find_workspace(os.getcwd(), workspace)
    if not python and not debian and not tools:
        raise PbuildError("pbuild lock needs --python, --tools and/or --debian",
                          hint="pbuild lock --python --tools --debian")
    if python:
        from pbuild.rules.python import lock_python

        lock_python(ws.root)
    if tools:
        from pbuild.rules.python import lock_tools

        lock_tools(ws.root)
    if debian:
        from pbuild.rules.debian import lock_debian

        lock_debian(ws.root, mirror=mirror)
    return 0


def push(request: BuildRequest, reference: str, *, plain_http: bool) -> int:
    session, label, _, providers = _build_one(request, request.patterns[0])
    image_type = _image_info_type()
    if image_type is None or image_type not in providers:
        raise PbuildError(f"{label} is not an image", label=label,
                          hint="pbuild push takes an image target")
    from pbuild.rules.oci.registry import push_main

    layout = os.path.join(session.workspace.root, providers[image_type].layout.path)
    return int(push_main(layout, reference, plain_http=plain_http, out=print))


def list_images(*, workspace: str | None) -> int:
    """Images built in this workspace: every ``pbuild-out/**/digest`` beside an ``oci/`` layout."""
    ws = find_workspace(os.getcwd(), workspace)
    top = os.path.join(ws.root, OUT_DIR)
    rows = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        if "digest" in filenames and os.path.isdir(os.path.join(dirpath, "oci")):
            rel = os.path.relpath(dirpath, top)
            package, _, name = rel.rpartition("/")
            with open(os.path.join(dirpath, "digest"), encoding="utf-8") as handle:
                digest = handle.read().strip()
            size, tags = _layout_size_and_tags(os.path.join(dirpath, "oci"), digest)
            rows.append((f"//{package}:{name}", ",".join(tags) or "<none>", digest, size))
    print(f"{'TARGET':30} {'TAGS':30} {'DIGEST':20} SIZE")
    for label, tag_text, digest, size in rows:
        print(f"{label:30} {tag_text:30} {digest[:19]:20} {size / 1e6:.1f} MB")
    return 0


def _layout_size_and_tags(layout: str, digest: str) -> tuple[int, list[str]]:
    try:
        algo, hexd = digest.split(":", 1)
        with open(os.path.join(layout, "blobs", algo, hexd), encoding="utf-8") as handle:
            manifest = json.load(handle)
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        with open(os.path.join(layout, "index.json"), encoding="utf-8") as handle:
            index = json.load(handle)
        tags = [m.get("annotations", {}).get("org.opencontainers.image.ref.name", "") for m in index.get("manifests", [])]
        return size, [t for t in tags if t]
    except (OSError, ValueError, KeyError):
        return 0, []
