"""Executing the action graph: in dependency order, in parallel, each action at most once.

For each action: compute its key from its inputs' digests; a local AC hit whose blobs are intact
is materialized; else a remote AC hit is downloaded (verified); else the action runs (sandboxed
for process actions) and its outputs go to the CAS, the AC and, when allowed, the remote.

What a cache returns is checked before it is used: a result must write exactly the action's
declared outputs (anything else is a miss, with one warning), and a blob handed to an action as an
input is verified unless the stat index vouches for it, whatever the filesystem layout.

Cache hits are handled on the calling thread, which keeps no-op builds free of thread hand-offs;
only actions that must run go to the worker pool.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pbuild.engine.api import Action, ActionIO, InProcessAction, ProcessAction, Toolchain
from pbuild.engine.errors import BuildFailed, PbuildError
from pbuild.engine.events import Reporter
from pbuild.engine.execroot import (
    base_env,
    explain_failure,
    missing_program,
    prepare_exec_root,
    run_process,
)
from pbuild.engine.hashing import StatIndex, digest_bytes
from pbuild.engine.keys import action_key, key_material, remote_key
from pbuild.engine.oserrors import from_os_error, full_filesystem
from pbuild.engine.store import (
    ActionResult,
    LocalStore,
    OciBlobs,
    OutputRecord,
    materialize,
    undeclared_outputs,
)
from pbuild.engine.toolchains import LayerFiles, ToolchainTrees, needed_files, tree_digest
from pbuild.engine.uptodate import DependencyRecorder
from pbuild.lib.errors import UserError
from pbuild.tools.fstree import remove_tree

_TAIL = 60  # lines of a failing action's stderr shown to the user


@dataclass
class ExecOptions:
    jobs: int
    keep_going: bool = False
    source_date_epoch: str = "0"
    cache_results: bool = True  # False: do not look up the AC (used for forced test runs)
    no_cache_mnemonics: frozenset[str] = frozenset()


@dataclass
class ActionFailure:
    action: Action
    error: PbuildError


@dataclass
class BuildResult:
    failures: list[ActionFailure] = field(default_factory=list)
    statuses: dict[int, str] = field(default_factory=dict)  # id(action) -> status
    results: dict[int, ActionResult] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # label, mnemonic, key
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.skipped


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
        remote: Any = None,
        sha_index: Any = None,
        hide_paths: Sequence[str] = (),
        recorder: DependencyRecorder | None = None,
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
        # path -> output record, for every generated file known in this build
        self._records: dict[str, OutputRecord] = {}
        self._dir_files: dict[str, list[OutputRecord]] = {}
        # (digest, executable) of blobs written or verified by this build: intact without a check
        self._intact: set[tuple[str, bool]] = set()
        self._env = base_env(options.source_date_epoch)
        self.toolchain_trees = ToolchainTrees(os.path.dirname(store.tmp_dir))

    # -- public ----------------------------------------------------------------------------

    def execute(self, actions: Sequence[Action]) -> BuildResult:
        """Run ``actions`` (already in dependency order) and return what happened."""
        result = BuildResult()
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
        running: dict[Future[tuple[str, ActionResult]], tuple[Action, str, bytes, float]] = {}
        # Local work is limited to --jobs by a semaphore; with a remote, more lookups may be in
        # flight at once, since they mostly wait on the network.
        jobs = max(1, self.options.jobs)
        in_flight = jobs if self.remote is None else max(jobs, 16)
        self._exec_slots = threading.BoundedSemaphore(jobs)
        pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="pbuild")

        def finish(action: Action, status: str, key: str, res: ActionResult | None, started: float) -> None:
            result.statuses[id(action)] = status
            result.events.append((str(action.owner), action.mnemonic, key))
            if res is not None:
                result.results[id(action)] = res
                self._remember(res)
            self.reporter.action_finished(
                ident=id(action), label=str(action.owner), mnemonic=action.mnemonic, key=key,
                status=status, duration_ms=(time.monotonic() - started) * 1000, description=action.progress,
            )
            for dependent in dependents.get(id(action), ()):
                waiting_on[id(dependent)] -= 1
                if waiting_on[id(dependent)] == 0 and status != "failed":
                    ready.append(dependent)

        def fail(action: Action, cause: UserError, key: str, started: float) -> None:
            nonlocal stop
            error = cause if isinstance(cause, PbuildError) else PbuildError.of(cause)
            if error.label is None:
                error.label = action.owner
            result.failures.append(ActionFailure(action, error))
            self.reporter.message(error.render())
            finish(action, "failed", key, None, started)
            if not self.options.keep_going:
                stop = True

        try:
            while ready or running:
                while ready and not stop and len(running) < in_flight:
                    action = ready.pop()
                    started = time.monotonic()
                    try:
                        material, digests = self._key_material(action)
                    except UserError as exc:
                        fail(action, exc, "", started)
                        continue
                    key = action_key(material)
                    hit = self._lookup(action, key, material)
                    if hit is not None:
                        status, res = hit
                        finish(action, status, key, res, started)
                        continue
                    future = pool.submit(self._miss, action, key, material, digests)
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
        result.skipped = len(actions) - len(result.statuses)
        return result

    def record_for(self, path: str) -> OutputRecord | None:
        return self._records.get(path)

    def files_of(self, path: str) -> list[OutputRecord]:
        """Records of a generated file, or of every file of a generated directory."""
        if path in self._dir_files:
            return self._dir_files[path]
        record = self._records.get(path)
        return [record] if record else []

    # -- keys and lookups ------------------------------------------------------------------

    def _remember(self, res: ActionResult) -> None:
        for record in res.outputs:
            self._records[record.path] = record
        for directory in res.directories:
            prefix = directory + "/"
            self._dir_files[directory] = [o for o in res.outputs if o.path.startswith(prefix)]

    def _input_digest(self, path: str, is_source: bool) -> str:
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

    def _key_material(self, action: Action) -> tuple[bytes, dict[str, str]]:
        digests = {f.path: self._input_digest(f.path, f.is_source) for f in action.inputs}
        env = dict(action.env) if isinstance(action, ProcessAction) else {}
        toolchain = self._toolchain_digests(action)
        return key_material(action, digests, env, self._env, toolchain), digests

    def _toolchain_digests(self, action: Action) -> list[str]:
        """The digests of the action's toolchain layer files (blob, sidecar, ... bottom first)."""
        if action.toolchain is None:
            return []
        return [self._input_digest(f.path, f.is_source) for f in action.toolchain.files]

    def _toolchain_root(self, action: Action) -> str | None:
        """The unpacked tree of the action's toolchain (made on first need), or None."""
        return None if action.toolchain is None else self.toolchain_tree(action.toolchain)

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
                    paths.append(self._checked_blob(records[0]))
                found.append(LayerFiles(*paths))
            return found

        digests = [self._input_digest(f.path, f.is_source) for f in toolchain.files]
        return self.toolchain_trees.tree(tree_digest(digests), layers, label=toolchain.label)

    def _lookup(self, action: Action, key: str, material: bytes) -> tuple[str, ActionResult] | None:
        if not self.options.cache_results or action.mnemonic in self.options.no_cache_mnemonics:
            return None
        res = self.store.get_action(key)
        if res is not None and self._accepts(action, [o.path for o in res.outputs], res.directories,
                                             "local cache") and self._materialize_all(res):
            return "cached", res
        if res is not None:
            self.store.forget_action(key)
        return None

    def _accepts(self, action: Action, paths: Sequence[str], directories: Sequence[str], where: str) -> bool:
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

    def _miss(self, action: Action, key: str, material: bytes, digests: Mapping[str, str]) -> tuple[str, ActionResult]:
        """On a worker: the remote cache if there is one, else run the action (within --jobs)."""
        if self.remote is not None and self.options.cache_results \
                and action.mnemonic not in self.options.no_cache_mnemonics:
            res = self._remote_lookup(action, material)
            if res is not None:
                self.store.put_action(key, res)
                return "remote_cached", res
        with self._exec_slots:
            self.reporter.action_started(id(action), action.progress)
            return self._run(action, key, material, digests)

    def _materialize_all(self, res: ActionResult) -> bool:
        """Make pbuild-out hold ``res``'s outputs; False if a blob is missing or damaged.

        A directory output that is not exactly as recorded is rebuilt beside and swapped in whole,
        so files of an older result never linger in it.
        """
        in_dirs: set[str] = set()
        for directory in res.directories:
            prefix = directory + "/"
            records = [r for r in res.outputs if r.path.startswith(prefix)]
            in_dirs.update(r.path for r in records)
            full_dir = os.path.join(self.root, directory)
            if os.path.isdir(full_dir) and not os.path.islink(full_dir) and \
                    _tree_files(full_dir) == {r.path[len(prefix):] for r in records} and \
                    all(self._linked_already(r) for r in records):
                continue
            if not self._materialize_tree(full_dir, directory, records):
                return False
        for record in res.outputs:
            if record.path in in_dirs:
                continue
            if not self._materialize_file(record):
                return False
        return True

    def _linked_already(self, record: OutputRecord) -> bool:
        """Whether pbuild-out holds ``record`` (by the stat index, else by sharing the blob's inode)."""
        dest = os.path.join(self.root, record.path)
        if self.index.lookup(dest) == record.digest:
            return True
        try:
            dest_st = os.stat(dest)
            blob_st = os.stat(self.store.blob_path(record.digest, record.executable))
        except OSError:
            return False
        if (dest_st.st_ino, dest_st.st_dev) != (blob_st.st_ino, blob_st.st_dev):
            return False
        # Linked, but not as indexed: the blob may have been damaged or chmod-ed in place (through
        # this link or another). Check it once; that also restores its mode, so stat it again.
        if not self._verify(record):
            return False
        self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True

    def _verify(self, record: OutputRecord) -> bool:
        """Re-hash ``record``'s blob (restoring its mode); remember it as intact for this build."""
        if not self.store.verify_blob(record.digest, record.executable):
            return False
        self._intact.add((record.digest, record.executable))
        return True

    def _materialize_file(self, record: OutputRecord) -> bool:
        if self._linked_already(record):
            return True
        if not self._verify(record):
            return False
        dest = os.path.join(self.root, record.path)
        materialize(self.store, record, dest)
        self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True

    def _materialize_tree(self, full_dir: str, directory: str, records: list[OutputRecord]) -> bool:
        """Build the directory beside its place from the records, then swap it in."""
        for record in records:
            if not self._verify(record):
                return False
        parent = os.path.dirname(full_dir)
        os.makedirs(parent, exist_ok=True)
        staging = f"{full_dir}.tmp-{os.getpid()}-{threading.get_ident()}"
        remove_tree(staging)
        os.makedirs(staging)
        for record in records:
            materialize(self.store, record, os.path.join(staging, record.path[len(directory) + 1:]))
        old = f"{full_dir}.old-{os.getpid()}-{threading.get_ident()}"
        if os.path.lexists(full_dir):
            os.rename(full_dir, old)
        os.rename(staging, full_dir)
        remove_tree(old, ignore_errors=True)
        for record in records:
            dest = os.path.join(self.root, record.path)
            self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True

    def _remote_lookup(self, action: Action, material: bytes) -> ActionResult | None:
        remote_result = self.remote.get_action_result(remote_key(material))
        if remote_result is None or remote_result.exit_code != 0:
            return None
        declared_dirs = tuple(f.path for f in action.outputs if f.is_directory)
        # Checked before anything is downloaded: a result naming other paths is not used at all.
        if not self._accepts(action, [o.path for o in remote_result.outputs], declared_dirs,
                             f"remote cache {self.remote.name}"):
            return None
        records = []
        for out in remote_result.outputs:
            tmp = os.path.join(self.store.tmp_dir, f"dl-{out.sha256}-{os.getpid()}-{id(out)}")
            if not self.remote.fetch_blob(out.sha256, out.size, tmp):
                return None
            digest, size = self.store.put_file(tmp, executable=out.executable, move=True)
            self._intact.add((digest, out.executable))
            if self.sha_index is not None:
                self.sha_index.remember(digest, out.sha256)
            records.append(OutputRecord(out.path, digest, size, out.executable))
        res = ActionResult(tuple(records), declared_dirs)
        if not self._materialize_all(res):
            return None
        return res

    # -- running ---------------------------------------------------------------------------

    def _run(self, action: Action, key: str, material: bytes, digests: Mapping[str, str]) -> tuple[str, ActionResult]:
        work = self.store.new_tmp_dir("act")
        try:
            if isinstance(action, ProcessAction):
                res = self._run_process(action, work)
            else:
                res = self._run_in_process(action, work)
        finally:
            remove_tree(work, ignore_errors=True)  # a leftover is removed with the stale temp dirs
            if isinstance(action, ProcessAction):
                self._refresh_linked_inputs(action)
        self.store.put_action(key, res)
        if not self._materialize_all(res):
            raise PbuildError(f"outputs of {action.owner} vanished from the cache while building",
                              hint="another process expunged the cache; build again")
        if self.remote is not None and getattr(self.remote, "upload_enabled", True):
            self._upload(action, material, res)
        return "executed", res

    def _upload(self, action: Action, material: bytes, res: ActionResult) -> None:
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
        self.remote.upload_action(remote_key(material), RemoteActionResult(tuple(outputs), 0), blobs)

    def _refresh_linked_inputs(self, action: Action) -> None:
        """The exec root linked these outputs' blobs: only their ctime changed (see StatIndex)."""
        for f in action.inputs:
            if not f.is_source:
                for record in self.files_of(f.path):
                    self.index.refresh_ctime(os.path.join(self.root, record.path))
                    self.index.refresh_ctime(self.store.blob_path(record.digest, record.executable))

    def _input_sources(self, action: Action) -> dict[str, str]:
        """Where each declared input (directories expanded) can be read on the host."""
        sources: dict[str, str] = {}
        for f in action.inputs:
            if f.is_source:
                sources[f.path] = os.path.join(self.root, f.path)
                continue
            for record in self.files_of(f.path):
                sources[record.path] = self._checked_blob(record)
        return sources

    def _checked_blob(self, record: OutputRecord) -> str:
        """The CAS blob of a generated input, known intact before an action reads it.

        Materializing an output does not vouch for its blob: with the cache on another
        filesystem, pbuild-out holds copies, and a blob damaged after the copy was made would
        reach the action unseen. So the blob itself is trusted only when this build wrote or
        verified it, or when the stat index vouches for its path; else it is re-hashed (and its
        mode restored). A damaged blob is restored from the verified copy in pbuild-out.
        """
        blob = self.store.blob_path(record.digest, record.executable)
        if (record.digest, record.executable) in self._intact or self.index.lookup(blob) == record.digest:
            return blob
        if not self._verify(record) and not self._restore_blob(record):
            raise BuildFailed(
                f"the cached blob of {record.path} is damaged and pbuild-out holds no intact copy of it",
                hint="build again: the damaged blob was removed, so the action that writes it runs again",
            )
        self.index.record(blob, os.stat(blob), record.digest, output=True)
        return blob

    def _restore_blob(self, record: OutputRecord) -> bool:
        """Put a damaged blob back from pbuild-out, when the stat index vouches for the output there."""
        dest = os.path.join(self.root, record.path)
        if self.index.lookup(dest) != record.digest:
            return False
        digest, _ = self.store.put_file(dest, executable=record.executable, move=False)
        if digest != record.digest:
            return False
        self._intact.add((record.digest, record.executable))
        return True

    def _run_process(self, action: ProcessAction, work: str) -> ActionResult:
        exec_root = os.path.join(work, "execroot")
        logs = os.path.join(work, "logs")
        os.makedirs(exec_root)
        os.makedirs(logs)
        sources = frozenset(f.path for f in action.inputs if f.is_source)
        writable = prepare_exec_root(exec_root, action, self._input_sources(action), sources)
        env = dict(self._env)
        env.update(dict(action.env))
        root = self._toolchain_root(action)
        outcome = run_process(action, exec_root, writable, env, self.hide_paths, logs, root=root)
        if outcome.setup_error:
            raise BuildFailed(f"{action.mnemonic} could not start its sandbox: {outcome.setup_error}",
                              label=action.owner)
        if action.stdout_to:
            log_dest = os.path.join(exec_root, action.stdout_to)
            with open(log_dest, "wb") as log:
                for part in (outcome.stdout_path, outcome.stderr_path):
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, log)
        if outcome.exit_code != 0:
            raise self._process_failure(action, outcome)
        return self._collect(action, exec_root)

    def _process_failure(self, action: ProcessAction, outcome: Any) -> BuildFailed:
        with open(outcome.stderr_path, "rb") as handle:
            stderr = handle.read().decode("utf-8", "replace")
        with open(outcome.stdout_path, "rb") as handle:
            stdout = handle.read().decode("utf-8", "replace")
        if action.stdout_to:
            # test failures: the log is the story; keep it too
            log = os.path.join(self.root, action.stdout_to)
            os.makedirs(os.path.dirname(log), exist_ok=True)
            tmp = log + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(stdout + stderr)
            os.replace(tmp, log)
        text = "\n".join((stdout + stderr).rstrip().splitlines()[-_TAIL:])
        why = missing_program(stderr, outcome.exit_code, action) or explain_failure(stderr + stdout, action, self.root)
        full = full_filesystem((outcome.stderr_path,))
        if full is not None:  # its own complaint may not even have fit in its log
            why = f"no space left on {full}; free some space there, or use --cache-dir DIR on a larger filesystem"
        code = outcome.exit_code
        how = f"killed by signal {code - 128}" if code > 128 else f"exit code {code}"
        command = " ".join(_quote(a) for a in action.argv)
        message = f"{action.mnemonic} failed ({how}): {command}"
        if text:
            message += "\n" + "\n".join("    " + line for line in text.splitlines())
        return BuildFailed(message, label=action.owner, hint=why)

    def _collect(self, action: Action, top: str) -> ActionResult:
        """Move declared outputs from ``top`` into the CAS; every declared output must exist."""
        records: list[OutputRecord] = []
        directories: list[str] = []
        for output in action.outputs:
            path = os.path.join(top, output.path)
            if output.is_directory:
                if not os.path.isdir(path):
                    raise BuildFailed(f"{action.mnemonic} did not create its declared directory {output.path}",
                                      label=action.owner, hint="the command must write every declared output")
                directories.append(output.path)
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames.sort()
                    for name in sorted(filenames):
                        full = os.path.join(dirpath, name)
                        rel = os.path.relpath(full, top)
                        records.append(self._ingest(full, rel, top, action.owner))
                continue
            if not os.path.lexists(path):
                raise BuildFailed(
                    f"{action.mnemonic} did not write its declared output {output.path}",
                    label=action.owner,
                    hint="the command must write every declared output ($@ or $(OUTS) in a genrule)",
                )
            if os.path.isdir(path):
                raise BuildFailed(f"declared output {output.path} is a folder, not a file", label=action.owner)
            records.append(self._ingest(path, output.path, top, action.owner))
        return ActionResult(tuple(records), tuple(directories))

    def _ingest(self, full: str, rel: str, top: str, owner: Any) -> OutputRecord:
        if os.path.islink(full):
            target = _resolve_inside(full, top)
            if target is None:
                raise BuildFailed(
                    f"output {rel} is a symlink to {os.readlink(full)}, which is not a file inside the sandbox",
                    label=owner,
                    hint="write the output's content (cp, not ln -s), from declared inputs only",
                )
            os.unlink(full)
            shutil.copyfile(target, full)
        executable = os.access(full, os.X_OK)
        digest, size = self.store.put_file(full, executable=executable, move=True)
        self._intact.add((digest, executable))
        return OutputRecord(rel, digest, size, executable)

    def _run_in_process(self, action: InProcessAction, work: str) -> ActionResult:
        out_top = os.path.join(work, "out")
        outputs: dict[str, str] = {}
        for output in action.outputs:
            dest = os.path.join(out_top, output.path)
            os.makedirs(dest if output.is_directory else os.path.dirname(dest), exist_ok=True)
            outputs[output.path] = dest
        inputs: dict[str, str] = {}
        for f in action.inputs:
            inputs[f.path] = os.path.join(self.root, f.path)
        tmp = os.path.join(work, "tmp")
        os.makedirs(tmp)
        io = ActionIO(inputs, outputs, tmp, action.owner, jobs=self.options.jobs,
                      toolchain_root=self._toolchain_root(action), oci_blobs=OciBlobs(self.store))
        try:
            action.function(io, action.params)
        except PbuildError as exc:
            if exc.label is None:
                exc.label = action.owner
            raise
        except UserError as exc:  # a shared library's error: said with the target it struck
            raise PbuildError.of(exc, label=action.owner) from None
        except Exception as exc:  # a crashing rule function is reported, with its traceback, as a failed action
            error = from_os_error(exc, near=(work,), cache_dir=self.store.root, label=action.owner)
            if error is not None:  # the machine's fault (a full disk), not the rule's
                raise error from None
            detail = "".join(traceback.format_exception(exc)[-6:])
            raise BuildFailed(
                f"{action.mnemonic} crashed: {type(exc).__name__}: {exc}\n{detail}",
                label=action.owner,
                hint=f"this is a bug in {action.function_name}",
            ) from None
        return self._collect(action, out_top)


def _tree_files(top: str) -> set[str]:
    """Paths (relative to ``top``) of the files and links below ``top``."""
    found: set[str] = set()
    stack = [("", top)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((name + "/", entry.path))
                else:
                    found.add(name)
    return found


def _resolve_inside(link: str, top: str) -> str | None:
    """The file a symlink output names, resolved within ``top`` (the exec root), or None.

    Relative links are followed by hand, one hop at a time; absolute ones and anything leaving
    ``top`` are refused.
    """
    top = os.path.normpath(top)
    current = link
    for _ in range(40):
        target = os.readlink(current)
        if os.path.isabs(target):
            return None  # absolute links name the sandbox's paths (or the host's): never portable
        target = os.path.join(os.path.dirname(current), target)
        target = os.path.normpath(target)
        if not (target + "/").startswith(top + "/"):
            return None
        if os.path.islink(target):
            current = target
            continue
        return target if os.path.isfile(target) else None
    return None


def _quote(arg: str) -> str:
    import shlex

    text = shlex.quote(arg)
    return text if len(text) < 400 else text[:400] + "...'"


