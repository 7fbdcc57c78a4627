"""The engine's commands beyond ``build`` and ``run`` (engine/run.py): test, query, clean, lock.
(The context the rule families' commands run in is :mod:`pbuild.engine.commandcontext`.)"""

from __future__ import annotations

import os
import sys

from pbuild.engine.api import OUT_DIR, Action
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
from pbuild.lib.gcpause import collector_paused
from pbuild.tools.fstree import remove_tree


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
        elif status is ActionStatus.REMOTE_EXECUTED:
            lines.append(f"{label}  PASSED (remote)")
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
    with collector_paused():  # loading builds a large, long-lived graph: see pbuild.lib.gcpause
        result = evaluate(expr, graph, request.cwd)
        text = render(result, graph, output)
    print(text, end="")
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
            from pbuild.engine.gclock import wait_exclusive

            store = LocalStore(os.path.abspath(cache_dir) if cache_dir else default_cache_dir())
            # As `pbuild system prune`: never from under a running build.
            with wait_exclusive(store.root, lambda m: print(m, file=sys.stderr, flush=True)):
                store.expunge()
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
