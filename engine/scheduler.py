"""Executing the action graph: in dependency order, in parallel, each action at most once.

For each action: compute its key from its inputs' digests; a local AC hit whose blobs are intact
is materialized; else a remote AC hit is downloaded (verified); else the action runs (sandboxed
for process actions, :mod:`pbuild.engine.runners`; on a remote executor's workers when one is
configured, :mod:`pbuild.engine.remoterun`) and its outputs go to the CAS, the AC and, when
allowed, the remote. This module schedules and decides; the stages it drives have their own
modules: :mod:`~pbuild.engine.outputs` (collecting and checking declared outputs) and
:mod:`~pbuild.engine.materialize` (outputs into pbuild-out, checked blobs into exec roots).

What a cache returns is checked before it is used: a result must write exactly the action's
declared outputs (anything else is a miss, with one warning), and a blob handed to an action as an
input is verified unless the stat index vouches for it, whatever the filesystem layout.

Cache hits are handled on the calling thread, which keeps no-op builds free of thread hand-offs;
only actions that must run go to the worker pool.
"""

from __future__ import annotations

import enum
import functools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pbuild.engine.api import Action, ProcessAction, Toolchain
from pbuild.engine.errors import PbuildError
from pbuild.engine.events import Reporter
from pbuild.engine.execroot import base_env
from pbuild.engine.hashing import StatIndex, digest_bytes
from pbuild.engine.keys import action_key, key_material, remote_key
from pbuild.engine.materialize import Materializer
from pbuild.engine.oserrors import from_os_error
from pbuild.engine.outputs import undeclared_outputs
from pbuild.engine.runners import run_in_process_action, run_process_action
from pbuild.engine.store import ActionResult, LocalStore, OciBlobs, OutputRecord
from pbuild.engine.toolchains import LayerFiles, ToolchainTrees, needed_files, tree_digest
from pbuild.engine.uptodate import DependencyRecorder
from pbuild.lib.digest import ContentDigest
from pbuild.lib.errors import UserError
from pbuild.tools.fstree import remove_tree

if TYPE_CHECKING:
    from pbuild.engine.remote import RemoteCache, RemoteExecutor, RemoteOutput
    from pbuild.engine.remote._index import Sha256Index
    from pbuild.engine.remoterun import RemoteRunner


class ActionStatus(enum.Enum):
    """How an action's outputs came to be (the values are the event file's words)."""

    CACHED = "cached"  # a local action cache hit
    REMOTE_CACHED = "remote_cached"  # downloaded from the remote cache
    EXECUTED = "executed"  # run in this build
    REMOTE_EXECUTED = "remote_executed"  # run in this build by a remote executor's worker
    FAILED = "failed"

    @property
    def succeeded(self) -> bool:
        return self is not ActionStatus.FAILED


@dataclass(frozen=True)
class ExecOptions:
    jobs: int
    keep_going: bool = False
    source_date_epoch: str = "0"
    cache_results: bool = True  # False: do not look up the AC (used for forced test runs)
    no_cache_mnemonics: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ActionFailure:
    action: Action
    error: PbuildError


@dataclass(frozen=True)
class ActionOutcome:
    """What became of one action: its status, its key (None when it failed before it had one)
    and, unless it failed, its result."""

    action: Action
    status: ActionStatus
    key: ContentDigest | None
    result: ActionResult | None


@dataclass(frozen=True)
class BuildResult:
    """What one execution did, action by action, in the order the actions finished."""

    outcomes: tuple[ActionOutcome, ...]
    failures: tuple[ActionFailure, ...]
    skipped: int  # actions never started (a dependency failed, or the build stopped)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.skipped

    @property
    def results(self) -> tuple[ActionResult, ...]:
        """The results of the actions that succeeded."""
        return tuple(o.result for o in self.outcomes if o.result is not None)

    @property
    def events(self) -> list[tuple[str, str, str]]:
        """(label, mnemonic, key) of every finished action, as the up-to-date stamp records them."""
        return [(str(o.action.owner), o.action.mnemonic, o.key or "") for o in self.outcomes]

    def status_of(self, action: Action) -> ActionStatus | None:
        """How ``action`` (one of the executed actions, by identity) finished; None: not run."""
        outcome = self._by_action.get(id(action))
        return None if outcome is None else outcome.status

    def failure_of(self, action: Action) -> ActionFailure | None:
        """Why ``action`` failed, or None."""
        return next((f for f in self.failures if f.action is action), None)

    @functools.cached_property
    def _by_action(self) -> dict[int, ActionOutcome]:
        # Keyed by identity, not equality: hashing a frozen Action hashes all its fields.
        return {id(o.action): o for o in self.outcomes}


class Executor:
    """Runs actions for one command. Collaborators are passed in; no globals."""

    def __init__(
        self,
        *,
        workspace_root: str,
        store: LocalStore,
        stat_index: StatIndex,
        reporter: Reporter,
        options: ExecOptions,
        remote: RemoteCache | None = None,
        sha_index: Sha256Index | None = None,
        hide_paths: Sequence[str] = (),
        recorder: DependencyRecorder | None = None,
        remote_executor: RemoteExecutor | None = None,
        local_fallback: bool = False,
    ) -> None:
        self.recorder = recorder or DependencyRecorder()
        self.root = workspace_root
        self.store = store
        self.index = stat_index
        self.reporter = reporter
        self.options = options
        self.remote = remote
        self.sha_index = sha_index
        self.hide_paths = tuple(hide_paths)
        self.materializer = Materializer(workspace_root, store, stat_index)
        # path -> output record, for every generated file known in this build
        self._records: dict[str, OutputRecord] = {}
        self._dir_files: dict[str, list[OutputRecord]] = {}
        self._env = base_env(options.source_date_epoch)
        self.env = self._env  # every process action's base environment (remote execution sends it)
        self._remote_run: RemoteRunner | None = None
        if remote_executor is not None:
            from pbuild.engine.remoterun import RemoteRunner  # only with an executor: off the local path

            self._remote_run = RemoteRunner(self, remote_executor, local_fallback=local_fallback)
        self._exec_slots = threading.BoundedSemaphore(max(1, options.jobs))
        self.toolchain_trees = ToolchainTrees(os.path.dirname(store.tmp_dir))

    # -- public ----------------------------------------------------------------------------

    def execute(self, actions: Sequence[Action]) -> BuildResult:
        """Run ``actions`` (already in dependency order) and return what happened."""
        outcomes: list[ActionOutcome] = []
        failures: list[ActionFailure] = []
        producers: dict[str, Action] = {o.path: a for a in actions for o in a.outputs}
        waiting_on: dict[int, int] = {}
        dependents: dict[int, list[Action]] = {}
        for action in actions:
            deps = {id(producers[f.path]) for f in needed_files(action) if f.path in producers}
            waiting_on[id(action)] = len(deps)
            for dep in deps:
                dependents.setdefault(dep, []).append(action)
        ready = [a for a in actions if waiting_on[id(a)] == 0]
        ready.reverse()
        self.reporter.start(len(actions))
        stop = False
        running: dict[Future[tuple[ActionStatus, ActionResult]], tuple[Action, ContentDigest, bytes, float]] = {}
        # Local work is limited to --jobs by a semaphore; with a remote, more lookups may be in
        # flight at once, since they mostly wait on the network.
        jobs = max(1, self.options.jobs)
        in_flight = jobs if self.remote is None and self._remote_run is None else max(jobs, 16)
        pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="pbuild")

        def finish(action: Action, status: ActionStatus, key: ContentDigest | None, res: ActionResult | None,
                   started: float) -> None:
            outcomes.append(ActionOutcome(action, status, key, res))
            if res is not None:
                self._remember(res)
            self.reporter.action_finished(
                ident=id(action), label=str(action.owner), mnemonic=action.mnemonic, key=key or "",
                status=status.value, duration_ms=(time.monotonic() - started) * 1000,
                description=action.progress,
            )
            for dependent in dependents.get(id(action), ()):
                waiting_on[id(dependent)] -= 1
                if waiting_on[id(dependent)] == 0 and status.succeeded:
                    ready.append(dependent)

        def fail(action: Action, cause: UserError, key: ContentDigest | None, started: float) -> None:
            nonlocal stop
            error = cause if isinstance(cause, PbuildError) else PbuildError.of(cause)
            if error.label is None:
                error.label = action.owner
            failures.append(ActionFailure(action, error))
            self.reporter.message(error.render())
            finish(action, ActionStatus.FAILED, key, None, started)
            if not self.options.keep_going:
                stop = True

        try:
            while ready or running:
                while ready and not stop and len(running) < in_flight:
                    action = ready.pop()
                    started = time.monotonic()
                    try:
                        material = self._key_material(action)
                    except UserError as exc:
                        fail(action, exc, None, started)
                        continue
                    key = action_key(material)
                    res = self._lookup(action, key)
                    if res is not None:
                        finish(action, ActionStatus.CACHED, key, res, started)
                        continue
                    future = pool.submit(self._miss, action, key, material)
                    running[future] = (action, key, material, started)
                if not running:
                    if ready and not stop:
                        continue
                    break
                # Short slices: a SIGINT the kernel hands to a worker thread only sets a flag, and
                # the main thread must get back to the interpreter to raise KeyboardInterrupt.
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    action, key, material, started = running.pop(future)
                    try:
                        status, res = future.result()
                    except UserError as exc:
                        fail(action, exc, key, started)
                        continue
                    except OSError as exc:  # a full disk or a read-only cache while storing outputs
                        error = from_os_error(exc, near=(self.store.tmp_dir, self.root), cache_dir=self.store.root)
                        if error is None:
                            raise
                        fail(action, error, key, started)
                        continue
                    finish(action, status, key, res, started)
        except KeyboardInterrupt:
            # Do not wait for running actions: the CLI exits at once, and the kernel kills each
            # sandbox with its parent (PDEATHSIG, PID namespace). Every cache write is atomic.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True, cancel_futures=True)
        return BuildResult(tuple(outcomes), tuple(failures), skipped=len(actions) - len(outcomes))

    def files_of(self, path: str) -> list[OutputRecord]:
        """Records of a generated file, or of every file of a generated directory."""
        if path in self._dir_files:
            return self._dir_files[path]
        record = self._records.get(path)
        return [record] if record else []

    def toolchain_tree(self, toolchain: Toolchain) -> str:
        """The unpacked tree of ``toolchain``, whose layer files this build has built."""

        def layers() -> list[LayerFiles]:
            found = []
            for layer in toolchain.layers:
                paths = []
                for f in (layer.blob, layer.meta):
                    if f.is_source:
                        paths.append(os.path.join(self.root, f.path))
                        continue
                    records = self.files_of(f.path)
                    if len(records) != 1:
                        raise PbuildError(f"toolchain {toolchain.label}: layer file {f.path} was not built",
                                          hint="this is a bug in a rule")
                    paths.append(self.materializer.checked_blob(records[0]))
                found.append(LayerFiles(*paths))
            return found

        digests = [self._input_digest(f.path, f.is_source) for f in toolchain.files]
        return self.toolchain_trees.tree(tree_digest(digests), layers, label=toolchain.label)

    # -- keys ------------------------------------------------------------------------------

    def _remember(self, res: ActionResult) -> None:
        for record in res.outputs:
            self._records[record.path] = record
        for directory in res.directories:
            prefix = directory + "/"
            self._dir_files[directory] = [o for o in res.outputs if o.path.startswith(prefix)]

    def _input_digest(self, path: str, is_source: bool) -> ContentDigest:
        if not is_source:
            if path in self._dir_files:
                # Sorted: a result from a remote cache lists a tree's files in its own order, and the
                # digest must be the same as for the tree built here (os.walk order).
                files = sorted(self._dir_files[path], key=lambda o: o.path)
                listing = "\n".join(f"{o.path} {o.digest} {int(o.executable)}" for o in files)
                return digest_bytes(listing.encode())
            record = self._records.get(path)
            if record is None:
                raise PbuildError(f"generated input {path} was not built", hint="this is a bug in a rule")
            return record.digest
        full = os.path.join(self.root, path)
        try:
            digest, key = self.index.digest_with_key(full)
            self.recorder.file(full, key)
            return digest
        except FileNotFoundError:
            raise PbuildError(
                f"source file {path} does not exist",
                hint="it was listed in BUILD.toml (or matched a glob) but is gone; restore it or update BUILD.toml",
            ) from None
        except IsADirectoryError:
            raise PbuildError(f"{path} is a folder, not a file", hint="list files, or use a glob") from None
        except OSError as exc:
            raise PbuildError(f"cannot read source file {path}: {exc.strerror}",
                              hint="make it readable by the user running pbuild") from None

    def _key_material(self, action: Action) -> bytes:
        digests = {f.path: self._input_digest(f.path, f.is_source) for f in action.inputs}
        env = dict(action.env) if isinstance(action, ProcessAction) else {}
        # The action's toolchain layer files (blob, sidecar, ... bottom first).
        toolchain = [] if action.toolchain is None else \
            [self._input_digest(f.path, f.is_source) for f in action.toolchain.files]
        return key_material(action, digests, env, self._env, toolchain)

    # -- cache decisions -------------------------------------------------------------------

    def _cache_allowed(self, action: Action) -> bool:
        return self.options.cache_results and action.mnemonic not in self.options.no_cache_mnemonics

    def _lookup(self, action: Action, key: ContentDigest) -> ActionResult | None:
        """A local AC hit whose outputs are now in pbuild-out, or None."""
        if not self._cache_allowed(action):
            return None
        res = self.store.get_action(key)
        if res is None:
            return None
        # A memo entry may name an AC entry evicted since, whose blobs are gone: materializing
        # then fails (unless pbuild-out still holds the outputs, as the stat index vouches), and
        # the action runs again: an evicted entry is a miss, never a failure.
        if self.accepts(action, [o.path for o in res.outputs], res.directories, "local cache") \
                and self.materializer.materialize_result(res):
            self.store.touch_action(key)  # its last use, for least-recently-used eviction
            return res
        self.store.forget_action(key)
        return None

    def accepts(self, action: Action, paths: Sequence[str], directories: Sequence[str], where: str) -> bool:
        """Whether a cached result writes exactly ``action``'s declared outputs; warns when not."""
        problem = undeclared_outputs(
            paths, directories,
            {f.path for f in action.outputs if not f.is_directory},
            {f.path for f in action.outputs if f.is_directory},
        )
        if problem is None:
            return True
        self.reporter.message(f"warning: {where}: ignoring the cached result of {action.owner} "
                              f"({action.mnemonic}): {problem}; running the action instead")
        return False

    def _miss(self, action: Action, key: ContentDigest, material: bytes) -> tuple[ActionStatus, ActionResult]:
        """On a worker: the remote cache if there is one, else run the action (within --jobs)."""
        if self.remote is not None and self._cache_allowed(action):
            res = self._remote_lookup(self.remote, action, material)
            if res is not None:
                self.store.put_action(key, res)
                return ActionStatus.REMOTE_CACHED, res
        if self._remote_run is not None and self._remote_run.wanted(action):
            assert isinstance(action, ProcessAction)
            self.reporter.action_started(id(action), action.progress)
            ran = self._remote_run.run(action, key, material)
            if ran is not None:
                res, server_cached = ran
                self.store.put_action(key, res)
                if self.remote is not None and self.sha_index is not None \
                        and self.remote.name == self._remote_run.executor.name:
                    # The cache is the executor's endpoint: the outputs just downloaded are there
                    # (a test's log is made here from the streams: it is not).
                    shas = (self.sha_index.get(r.digest) for r in res.outputs if r.path != action.stdout_to)
                    self.remote.note_present(sha for sha in shas if sha is not None)
                if self.remote is not None and self.remote.upload_enabled:
                    self._upload(self.remote, material, res)
                return (ActionStatus.REMOTE_CACHED if server_cached else ActionStatus.REMOTE_EXECUTED), res
        with self._exec_slots:
            self.reporter.action_started(id(action), action.progress)
            return ActionStatus.EXECUTED, self._run(action, key, material)

    def _remote_lookup(self, remote: RemoteCache, action: Action, material: bytes) -> ActionResult | None:
        remote_result = remote.get_action_result(remote_key(material))
        if remote_result is None or remote_result.exit_code != 0:
            return None
        declared_dirs = tuple(f.path for f in action.outputs if f.is_directory)
        # Checked before anything is downloaded: a result naming other paths is not used at all.
        if not self.accepts(action, [o.path for o in remote_result.outputs], declared_dirs,
                            f"remote cache {remote.name}"):
            return None
        return self.download_outputs(remote, remote_result.outputs, declared_dirs)

    def download_outputs(self, source: RemoteCache | RemoteExecutor, outputs: Sequence[RemoteOutput],
                         declared_dirs: tuple[str, ...], extra: Sequence[OutputRecord] = ()) -> ActionResult | None:
        """Download ``outputs`` from a remote cache or executor (each verified by sha256 and
        size), store them in the CAS and materialize them with ``extra`` (records stored
        already); ``None`` when a download or the materialization failed."""
        records = []
        for out in outputs:
            tmp = os.path.join(self.store.tmp_dir, f"dl-{out.sha256}-{os.getpid()}-{id(out)}")
            if not source.fetch_blob(out.sha256, out.size, tmp):
                return None
            digest, size = self.store.put_file(tmp, executable=out.executable, move=True)
            record = OutputRecord(out.path, digest, size, out.executable)
            self.materializer.trust(record)
            if self.sha_index is not None:
                self.sha_index.remember(digest, out.sha256)
            records.append(record)
        records.extend(extra)
        res = ActionResult(tuple(records), declared_dirs)
        if not self.materializer.materialize_result(res):
            return None
        return res

    # -- running ---------------------------------------------------------------------------

    def _run(self, action: Action, key: ContentDigest, material: bytes) -> ActionResult:
        work = self.store.new_tmp_dir("act")
        try:
            if isinstance(action, ProcessAction):
                sources = self._input_sources(action)
                res = run_process_action(action, work, store=self.store, workspace_root=self.root,
                                         input_sources=sources, env={**self._env, **dict(action.env)},
                                         hide_paths=self.hide_paths, toolchain_root=self._toolchain_root(action))
            else:
                res = run_in_process_action(action, work, store=self.store, workspace_root=self.root,
                                            jobs=self.options.jobs, toolchain_root=self._toolchain_root(action),
                                            oci_blobs=OciBlobs(self.store))
        finally:
            remove_tree(work, ignore_errors=True)  # a leftover is removed with the stale temp dirs
            if isinstance(action, ProcessAction):
                # The exec root linked these inputs' blobs: only their ctime changed.
                for f in action.inputs:
                    if not f.is_source:
                        for record in self.files_of(f.path):
                            self.materializer.refresh_linked(record)
        for record in res.outputs:
            self.materializer.trust(record)
        self.store.put_action(key, res)
        if not self.materializer.materialize_result(res):
            raise PbuildError(f"outputs of {action.owner} vanished from the cache while building",
                              hint="another process expunged the cache; build again")
        if self.remote is not None and self.remote.upload_enabled:
            self._upload(self.remote, material, res)
        return res

    def _toolchain_root(self, action: Action) -> str | None:
        """The unpacked tree of the action's toolchain (made on first need), or None."""
        return None if action.toolchain is None else self.toolchain_tree(action.toolchain)

    def _upload(self, remote: RemoteCache, material: bytes, res: ActionResult) -> None:
        from pbuild.engine.remote import RemoteActionResult, RemoteOutput

        outputs = []
        blobs: dict[str, str] = {}
        for record in res.outputs:
            path = self.store.blob_path(record.digest, record.executable)
            sha = self.sha_index.sha256_for(record.digest, path) if self.sha_index else None
            if sha is None:
                return
            outputs.append(RemoteOutput(record.path, sha, record.size, record.executable))
            blobs[sha] = path
        remote.upload_action(remote_key(material), RemoteActionResult(tuple(outputs), 0), blobs)

    def _input_sources(self, action: Action) -> Mapping[str, str]:
        """Where each declared input (directories expanded) can be read on the host."""
        sources: dict[str, str] = {}
        for f in action.inputs:
            if f.is_source:
                sources[f.path] = os.path.join(self.root, f.path)
                continue
            for record in self.files_of(f.path):
                sources[record.path] = self.materializer.checked_blob(record)
        return sources
