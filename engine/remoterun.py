"""Remote execution of one process action, for the scheduler: what travels, what comes back.

For a process action that missed the local and remote caches, :class:`RemoteRunner` builds the
:class:`~pbuild.engine.remote.RemoteExecRequest` (declared inputs from checked CAS blobs and
source files, the toolchain's layer files, the host fingerprint of an action on host tools),
has the executor run it, and turns the answer into the same result a local run gives: outputs
downloaded and verified (sha256 and size), stored in the CAS, materialized; a non-zero exit code
fails the action with the message a local failure gives, from the worker's stdout and stderr.

Trouble is decided here too: an executor that cannot be used falls back to local execution (one
warning, for the rest of the build) when allowed, else fails the action with the reason; outputs
whose bytes do not match the digests the worker reported are one warning and a re-run, once
remotely without the server's action cache, then locally. This module is imported only when an
executor is configured, so a build without one never loads it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from pbuild.engine.api import ProcessAction
from pbuild.engine.errors import BuildFailed
from pbuild.engine.execroot import ProcessOutcome
from pbuild.engine.hashing import host_fingerprint
from pbuild.engine.keys import remote_key
from pbuild.engine.remote import (
    ExecInput,
    ExecutionFailed,
    ExecutorUnavailable,
    RemoteActionResult,
    RemoteExecRequest,
    RemoteExecutor,
)
from pbuild.engine.runners import process_failure
from pbuild.engine.store import ActionResult, OutputRecord
from pbuild.lib.digest import ContentDigest
from pbuild.tools.fstree import remove_tree

if TYPE_CHECKING:
    from pbuild.engine.scheduler import Executor

FALLBACK_HINT = ("pass --remote-local-fallback (or set [remote] local-fallback = true) to run actions "
                 "locally when the executor cannot be used")


class RemoteRunner:
    """Runs process actions on ``executor`` for the scheduler ``sched``. Thread-safe."""

    def __init__(self, sched: Executor, executor: RemoteExecutor, *, local_fallback: bool) -> None:
        self.sched = sched
        self.executor = executor
        self.local_fallback = local_fallback
        self._lock = threading.Lock()
        self._down: str | None = None  # why the executor is no longer used in this build
        self._warned_down = False

    # -- deciding ------------------------------------------------------------------------------

    def wanted(self, action: object) -> bool:
        """Whether ``action`` should run remotely (a process action, with the executor usable
        or, without fallback, to be failed with the reason it is not)."""
        if not isinstance(action, ProcessAction):
            return False  # in-process actions (layers, images) run here: the same digests either way
        return self._down is None or not self.local_fallback

    def _went_down(self, reason: str) -> None:
        """The executor cannot be used: fail this action or fall back (one warning per build)."""
        with self._lock:
            self._down = self._down or reason
            warn = self.local_fallback and not self._warned_down
            self._warned_down = self._warned_down or warn
        if warn:
            self.sched.reporter.message(f"warning: remote executor {self.executor.name}: {reason}; running "
                                        f"actions locally for the rest of this build (--remote-local-fallback)")

    # -- running -------------------------------------------------------------------------------

    def run(self, action: ProcessAction, key: ContentDigest, material: bytes) -> tuple[ActionResult, bool] | None:
        """Run ``action`` remotely: its result and whether the server answered from its own
        action cache, or ``None`` when it must run locally instead (fallback, damaged outputs).
        Raises :class:`BuildFailed` for an action that failed, or an executor that cannot be
        used without fallback."""
        if self._down is not None:
            if self.local_fallback:
                return None
            raise BuildFailed(f"remote executor {self.executor.name} is unavailable: {self._down}",
                              label=action.owner, hint=FALLBACK_HINT)
        request = self.request(action, remote_key(material))
        for attempt in range(2):
            try:
                execution = self.executor.execute(request)
            except ExecutorUnavailable as exc:
                self._went_down(str(exc))
                if self.local_fallback:
                    return None
                raise BuildFailed(f"remote executor {self.executor.name} is unavailable: {exc}",
                                  label=action.owner, hint=FALLBACK_HINT) from None
            except ExecutionFailed as exc:
                raise BuildFailed(f"{action.mnemonic} failed on remote executor {self.executor.name}: {exc}",
                                  label=action.owner) from None
            result = execution.result
            if result.exit_code != 0:
                raise self._failure(action, result, execution.worker)
            res = self._outputs(action, result)
            if res is not None:
                return res, execution.cached
            # Bytes that are not what the worker reported (fetch_blob warned): the result is
            # not used; once more without the server's cache (it may have kept the bad result),
            # then here.
            if attempt == 0:
                request = replace(request, skip_cache_lookup=True)
        return None

    def request(self, action: ProcessAction, key_sha256: str) -> RemoteExecRequest:
        """What a worker needs to run ``action`` as it would run here."""
        sched = self.sched
        inputs: list[ExecInput] = []
        empty_dirs: list[str] = []
        for f in action.inputs:
            if f.is_source:
                inputs.append(self._source(f.path))
                continue
            if f.is_directory:
                empty_dirs.append(f.path)  # may be empty, so it would not appear through its files
            for record in sched.files_of(f.path):
                inputs.append(self._generated(record))
        layers: list[tuple[ExecInput, ExecInput]] = []
        if action.toolchain is not None:
            for layer in action.toolchain.layers:
                pair = [self._source(f.path) if f.is_source else self._generated(self._one(f.path, action))
                        for f in (layer.blob, layer.meta)]
                layers.append((pair[0], pair[1]))
        env = {**sched.env, **dict(action.env)}
        outputs = [f for f in action.outputs if f.path != action.stdout_to]
        return RemoteExecRequest(
            label=str(action.owner), mnemonic=action.mnemonic, key_sha256=key_sha256,
            argv=tuple(action.argv), env=tuple(sorted(env.items())), workdir=action.workdir,
            output_files=tuple(f.path for f in outputs if not f.is_directory),
            output_dirs=tuple(f.path for f in outputs if f.is_directory),
            inputs=tuple(inputs), empty_dirs=tuple(empty_dirs), toolchain_layers=tuple(layers),
            host_fingerprint=host_fingerprint() if action.host_tools and action.toolchain is None else None,
            timeout_s=action.timeout_s,
        )

    def _one(self, path: str, action: ProcessAction) -> OutputRecord:
        records = self.sched.files_of(path)
        if len(records) != 1:
            raise BuildFailed(f"toolchain layer file {path} was not built", label=action.owner,
                              hint="this is a bug in a rule")
        return records[0]

    def _source(self, path: str) -> ExecInput:
        full = os.path.join(self.sched.root, path)
        digest, stat = self.sched.index.digest_with_key(full)
        # Locally a source input is a copy keeping its executable bit (execroot.link_or_copy).
        return ExecInput(path, full, digest, stat[0], os.access(full, os.X_OK))

    def _generated(self, record: OutputRecord) -> ExecInput:
        blob = self.sched.materializer.checked_blob(record)
        return ExecInput(record.path, blob, record.digest, record.size, record.executable)

    # -- results -------------------------------------------------------------------------------

    def _outputs(self, action: ProcessAction, result: RemoteActionResult) -> ActionResult | None:
        """The verified, stored and materialized outputs, or ``None`` when a download failed."""
        sched = self.sched
        declared_dirs = tuple(f.path for f in action.outputs if f.is_directory)
        outputs = result.outputs
        log: OutputRecord | None = None
        if action.stdout_to:
            log = self._log(action, result)
            if log is None:
                return None
        paths = [o.path for o in outputs] + ([log.path] if log is not None else [])
        if not sched.accepts(action, paths, declared_dirs, f"remote executor {self.executor.name}"):
            raise BuildFailed(f"{action.mnemonic} ran remotely but its result does not match its declared "
                              f"outputs", label=action.owner,
                              hint="the command must write every declared output, and only those")
        return sched.download_outputs(self.executor, outputs, declared_dirs, extra=() if log is None else (log,))

    def _log(self, action: ProcessAction, result: RemoteActionResult) -> OutputRecord | None:
        """A test action's log (its stdout then its stderr, as locally) stored in the CAS."""
        sched = self.sched
        work = sched.store.new_tmp_dir("rlog")
        try:
            paths = self._streams(result, work)
            if paths is None:
                return None
            log = os.path.join(work, "log")
            with open(log, "wb") as out:
                for part in paths:
                    with open(part, "rb") as handle:
                        out.write(handle.read())
            digest, size = sched.store.put_file(log, executable=False, move=True)
        finally:
            remove_tree(work, ignore_errors=True)
        record = OutputRecord(action.stdout_to, digest, size, False)
        sched.materializer.trust(record)
        return record

    def _streams(self, result: RemoteActionResult, work: str) -> tuple[str, str] | None:
        """The action's stdout and stderr downloaded into ``work`` (verified), or ``None``."""
        paths = []
        for name, sha, size in (("stdout", result.stdout_sha256, result.stdout_size),
                                ("stderr", result.stderr_sha256, result.stderr_size)):
            path = os.path.join(work, name)
            if sha is None:
                open(path, "wb").close()
            elif not self.executor.fetch_blob(sha, size or 0, path):
                return None
            paths.append(path)
        return paths[0], paths[1]

    def _failure(self, action: ProcessAction, result: RemoteActionResult, worker: str) -> BuildFailed:
        """The failure of an action that exited non-zero on a worker: the local message."""
        work = self.sched.store.new_tmp_dir("rfail")
        try:
            paths = self._streams(result, work)
            if paths is None:
                for name in ("stdout", "stderr"):
                    with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
                        handle.write("" if name == "stdout" else
                                     "(pbuild: the output of the remote run could not be downloaded)\n")
                paths = os.path.join(work, "stdout"), os.path.join(work, "stderr")
            return process_failure(action, ProcessOutcome(result.exit_code, paths[0], paths[1], 0.0),
                                   self.sched.root)
        finally:
            remove_tree(work, ignore_errors=True)
