"""One command's build pipeline: workspace → load → analyze → execute → materialize.

The CLI parses flags into a :class:`BuildRequest`; everything here takes what it needs as
arguments so tests can drive it without a command line.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbuild.engine import uptodate
from pbuild.engine.analysis import ActionGraph, Analyzer
from pbuild.engine.api import OUT_DIR, Action, DefaultInfo, File, ProcessAction, RunInfo, Target, TestInfo
from pbuild.engine.budget import Budget, read_budget
from pbuild.engine.errors import BuildFailed
from pbuild.engine.events import Reporter
from pbuild.engine.gclock import lock_shared
from pbuild.engine.hashing import StatIndex
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader, ParseCache
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.scheduler import BuildResult, ExecOptions, Executor
from pbuild.engine.store import LocalStore
from pbuild.engine.toolchains import needed_files
from pbuild.engine.uptodate import DependencyRecorder
from pbuild.engine.workspace import (
    WORKSPACE_FILE,
    Workspace,
    current_package,
    default_cache_dir,
    find_workspace,
)
from pbuild.lib import atomicio
from pbuild.lib.determinism import source_date_epoch
from pbuild.lib.filelock import FileLock
from pbuild.lib.gcpause import collector_paused


@dataclass(frozen=True)
class BuildRequest:
    """What one command asks to build, and how (from the CLI's flags)."""

    patterns: Sequence[str]
    cwd: str = field(default_factory=os.getcwd)
    workspace: str | None = None
    cache_dir: str | None = None
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    keep_going: bool = False
    event_file: str | None = None
    remote_settings: Any = None
    quiet: bool = False
    interactive: bool | None = None


@dataclass
class Session:
    """What one command holds open: the workspace, its loader, analyzer and store."""

    workspace: Workspace
    loader: Loader
    analyzer: Analyzer
    store: LocalStore
    index: StatIndex
    cache_dir: str
    index_base: str
    remote: Any = None
    sha_index: Any = None
    executor: Any = None  # a RemoteExecutor, when actions run remotely
    local_fallback: bool = False
    # The build timestamp, read from SOURCE_DATE_EPOCH and validated once, in open_session.
    epoch: int = 0
    # The shared hold on the cache that keeps eviction and `pbuild system prune` out while the
    # session may still read what it found there (pbuild.engine.cachegc).
    gc_lock: FileLock | None = None
    budget: Budget | None = None
    started: float = 0.0
    say: Callable[[str], None] | None = None

    def close(self) -> None:
        try:
            self.index.save()
            self.store.save_memo()
            self.loader.parse_cache.save()
            if self.sha_index is not None:
                self.sha_index.save()
            if self.remote is not None:
                self.remote.close()
            if self.executor is not None:
                self.executor.close()
        finally:
            if self.gc_lock is not None:
                self.gc_lock.release()
                self.gc_lock = None
        if self.budget is not None:
            from pbuild.engine.budget import after_build

            after_build(self.cache_dir, self.budget, self.store.bytes_added, self.started,
                        self.say or (lambda m: print(m, file=sys.stderr)), used=self.store.used_keys)
            self.budget = None  # once, however often close is called


def open_session(request: BuildRequest, *, warn: Any = None, workspace: Workspace | None = None) -> Session:
    """Open the request's workspace (``workspace``, when the command found it already)."""
    epoch = source_date_epoch()  # a bad value is refused before anything is opened
    started = time.time()
    workspace = workspace or find_workspace(request.cwd, request.workspace)
    budget = read_budget(workspace)  # a bad max_size, too
    cache_dir = os.path.abspath(request.cache_dir) if request.cache_dir else default_cache_dir()
    say = warn or (lambda m: print(m, file=sys.stderr))
    ruleset = RuleSet(workspace)
    index_base = uptodate.index_base(workspace.root, cache_dir)
    recorder = DependencyRecorder()
    recorder.file(workspace.path(WORKSPACE_FILE))
    for plugin in workspace.plugins:
        recorder.file(workspace.path(plugin))
    loader = Loader(workspace, ruleset, ParseCache(index_base + ".parse"), recorder)
    analyzer = Analyzer(loader, workspace.config)
    store = LocalStore(cache_dir, memo_path=index_base + ".acmemo",  # checks the cache dir first
                       uses_path=index_base + ".acuse")
    gc_lock = lock_shared(cache_dir, say)
    try:
        store.remove_stale_tmp()
        session = Session(workspace, loader, analyzer, store, StatIndex(index_base + ".stat"), cache_dir, index_base,
                          epoch=epoch, gc_lock=gc_lock, budget=budget, started=started, say=say)
        settings = request.remote_settings
        if settings is not None and (getattr(settings, "url", None) or getattr(settings, "executor", None)):
            from pbuild.engine.remote import Sha256Index, connect_executor, open_remote

            session.sha_index = Sha256Index(cache_dir)
            if settings.url:
                session.remote = open_remote(settings, cache_dir=cache_dir, warn=say)
            if settings.executor:
                session.executor = connect_executor(settings, cache_dir=cache_dir, warn=say,
                                                    sha_index=session.sha_index)
                session.local_fallback = settings.local_fallback
    except BaseException:
        gc_lock.release()
        raise
    return session


def analyze(session: Session, patterns: Sequence[str], cwd: str) -> tuple[list[Label], ActionGraph]:
    labels = session.loader.expand_patterns(patterns, current_package(session.workspace, cwd))
    graph = session.analyzer.analyze(labels)
    return labels, graph


def requested_files(graph: ActionGraph, labels: Sequence[Label]) -> list[File]:
    """What building ``labels`` produces: their files and runfiles, and the toolchain an
    executable runs on (``pbuild run`` starts it there)."""
    files: list[File] = []
    for label in labels:
        target = graph.targets[label].as_target()
        info = target.get(DefaultInfo)
        if info is not None:
            files.extend(info.files)
            files.extend(info.runfiles)
        run_info = target.get(RunInfo)
        if run_info is not None and run_info.toolchain is not None:
            files.extend(run_info.toolchain.files)
    return files


def execute(session: Session, actions: Sequence[Action], request: BuildRequest, *,
            reporter: Reporter, cache_results: bool = True,
            no_cache_mnemonics: frozenset[str] = frozenset(), keep_going: bool | None = None) -> tuple[BuildResult, Executor]:
    options = ExecOptions(
        jobs=max(1, request.jobs),
        keep_going=request.keep_going if keep_going is None else keep_going,
        source_date_epoch=str(session.epoch),
        cache_results=cache_results,
        no_cache_mnemonics=no_cache_mnemonics,
    )
    executor = Executor(
        workspace_root=session.workspace.root,
        store=session.store,
        stat_index=session.index,
        reporter=reporter,
        options=options,
        remote=session.remote,
        sha_index=session.sha_index,
        hide_paths=(session.workspace.root, session.cache_dir),
        recorder=session.loader.recorder,
        remote_executor=session.executor,
        local_fallback=session.local_fallback,
    )
    mark_output_folder(session.workspace.path(OUT_DIR))
    result = executor.execute(actions)
    return result, executor


OUT_MARKER = ".pbuild-out"


def mark_output_folder(out: str) -> None:
    """Mark pbuild-out as pbuild's, so `pbuild clean` may empty it even through a symlink."""
    marker = os.path.join(out, OUT_MARKER)
    if not os.path.exists(marker):
        os.makedirs(out, exist_ok=True)
        atomicio.write_text(marker, "pbuild's output folder: `pbuild clean` empties it.\n")


@dataclass
class Analyzed:
    """What execution and the commands need of analysis; picklable, so it can be cached."""

    labels: list[Label]
    actions: list[Action]
    targets: dict[Label, Target]
    rule_names: dict[Label, str]


def analyze_for_build(session: Session, request: BuildRequest, reporter: Reporter | None = None) -> Analyzed:
    """Analysis of the requested targets, reused from the last identical command when nothing
    analysis read (BUILD files, listed folders, files read by rules, pbuild's code) has changed.

    A source file's content never changes analysis, so editing a source skips straight to
    execution; that keeps the one-file-changed rebuild of a large workspace fast. A saved
    analysis that cannot be read is discarded, with a message to ``reporter``.
    """
    with collector_paused():  # the graph is large and long-lived: see pbuild.lib.gcpause
        return _analyze_for_build(session, request, reporter)


def _analyze_for_build(session: Session, request: BuildRequest, reporter: Reporter | None) -> Analyzed:
    cache_path = uptodate.stamp_path(session.index_base, uptodate.request_text(
        request.patterns, current_package(session.workspace, request.cwd), session.epoch)) + ".analysis"
    recorder = session.loader.recorder
    payload = uptodate.load_analysis(cache_path, recorder)
    if payload is not None:
        analyzed, reason = _unpickle_analysis(session, payload)
        if analyzed is not None:
            return analyzed
        # Its inputs are unchanged, yet it cannot be read: say so (a silent re-analysis on every
        # build is how plugin workspaces lost their analysis cache unnoticed), then replace it.
        uptodate.discard_stamp(cache_path)
        if reporter is not None:
            reporter.message(f"pbuild: {reason}; analyzing afresh")
    labels, graph = analyze(session, request.patterns, request.cwd)
    analyzed = Analyzed(
        labels=labels,
        actions=graph.actions_for(requested_files(graph, labels)),
        targets={label: graph.targets[label].as_target() for label in labels},
        rule_names={label: graph.targets[label].rule.name for label in labels},
    )
    try:
        data = pickle.dumps(analyzed, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        # A rule returned something unpicklable (a lambda, an open file): by design its analysis
        # is not saved, and runs again on each build that gets past the no-op check.
        return analyzed
    uptodate.save_analysis(cache_path, recorder, data)
    return analyzed


def _unpickle_analysis(session: Session, payload: bytes) -> tuple[Analyzed | None, str]:
    """The saved analysis, or None and why it cannot be used.

    Plugins are loaded first: the analysis holds their providers and in-process functions,
    which unpickle by module name, and plugin modules exist only once loaded.
    """
    session.loader.ruleset.load_plugins()
    try:
        analyzed = pickle.loads(payload)
    except (pickle.UnpicklingError, ImportError, AttributeError, EOFError, TypeError, ValueError) as exc:
        return None, f"saved analysis discarded ({type(exc).__name__}: {exc})"
    if not isinstance(analyzed, Analyzed):
        return None, f"saved analysis discarded (it holds a {type(analyzed).__name__})"
    return analyzed, ""


def build_and_stamp(request: BuildRequest, stamp: str, reporter: Reporter, *,
                    workspace: Workspace | None = None) -> None:
    """``pbuild build`` after the up-to-date check failed: build, then write a new stamp."""
    session, _, result = build(request, reporter=reporter, workspace=workspace)
    outputs = [os.path.join(session.workspace.root, o.path) for res in result.results for o in res.outputs]
    uptodate.write_stamp(stamp, session.loader.recorder, outputs, result.events)


def _actions_subset(analyzed: Analyzed, files: Sequence[File]) -> list[Action]:
    """The actions (in the analyzed order) needed to produce ``files``."""
    producers = {o.path: a for a in analyzed.actions for o in a.outputs}
    needed: set[int] = set()
    stack = [producers[f.path] for f in files if f.path in producers]
    while stack:
        action = stack.pop()
        if id(action) in needed:
            continue
        needed.add(id(action))
        stack.extend(producers[f.path] for f in needed_files(action) if f.path in producers)
    return [a for a in analyzed.actions if id(a) in needed]


def build(request: BuildRequest, *, reporter: Reporter | None = None,
          only_files: Callable[[Analyzed], Sequence[File]] | None = None,
          after: Callable[[Analyzed, Executor], None] | None = None,
          workspace: Workspace | None = None) -> tuple[Session, Analyzed, BuildResult]:
    """Build the targets ``request.patterns`` name (or, with ``only_files``, just what produces
    the files it picks); ``after`` is called with the executor once the build succeeded (to
    prepare what a command needs of it, such as a toolchain tree). Raises BuildFailed when an
    action failed. ``workspace`` is the request's, when the command found it already."""
    reporter = reporter or Reporter(event_file=request.event_file, quiet=request.quiet, interactive=request.interactive)
    session = open_session(request, warn=reporter.message, workspace=workspace)
    executing = False
    try:
        analyzed = analyze_for_build(session, request, reporter)
        executing = True
        actions = analyzed.actions if only_files is None else _actions_subset(analyzed, only_files(analyzed))
        result, executor = execute(session, actions, request, reporter=reporter)
        if after is not None and result.ok:
            after(analyzed, executor)
    except BaseException as exc:
        reporter.finish(print_summary=executing and not isinstance(exc, KeyboardInterrupt))
        session.close()
        raise
    reporter.finish()
    if (session.remote is not None or session.executor is not None) and not request.quiet:
        reporter.message(remote_summary(session.remote.stats() if session.remote is not None else None,
                                        session.executor.stats() if session.executor is not None else None))
    session.close()
    if not result.ok:
        raise BuildFailed(
            f"build failed: {len(result.failures)} action(s) failed"
            + (f", {result.skipped} not run" if result.skipped else ""),
            hint="use --keep-going to build everything that can be built" if not request.keep_going else None,
        )
    return session, analyzed, result


def remote_summary(stats: Any, executed: Any = None) -> str:
    """One line on the remote's traffic: ``remote: 12 hits, 3 misses, 4.1 MB down, 0 B up``, and
    with an executor (``executed``: its stats) how many actions ran remotely."""

    def size(n: int) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} B"

    down = (stats.bytes_downloaded if stats else 0) + (executed.bytes_downloaded if executed else 0)
    up = (stats.bytes_uploaded if stats else 0) + (executed.bytes_uploaded if executed else 0)
    text = "remote: "
    if stats is not None:
        text += f"{stats.hits} hits, {stats.misses} misses, "
    text += f"{size(down)} down, {size(up)} up"
    if executed is not None:
        text += f", {executed.executed} executed remotely"
    errors = (stats.errors if stats else 0) + (executed.errors if executed else 0)
    if errors:
        text += f", {errors} errors"
    if stats is not None and stats.disabled:
        text += " (disabled after errors; the build went on locally)"
    return text


def test_actions(graph: ActionGraph, labels: Sequence[Label]) -> list[tuple[Label, ProcessAction]]:
    """One sandboxed test action per test target among ``labels``."""
    tests = []
    for label in labels:
        configured = graph.targets[label]
        info = configured.as_target().get(TestInfo)
        if not configured.rule.test or info is None:
            continue
        prefix = f"{OUT_DIR}/{label.package}/" if label.package else f"{OUT_DIR}/"
        log = File(f"{prefix}{label.name}.test.log", is_source=False)
        action = ProcessAction(
            owner=label,
            mnemonic="TestRunner",
            argv=tuple(info.argv),
            inputs=tuple(sorted(set(info.inputs))),
            outputs=(log,),
            env=tuple(sorted(info.env.items())),
            workdir=info.workdir,
            host_tools=True,
            progress=f"Testing {label}",
            stdout_to=log.path,
            timeout_s=info.timeout_s,
            toolchain=info.toolchain,
        )
        tests.append((label, action))
    return tests
