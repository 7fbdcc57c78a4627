"""One lease's work: fetch the action's inputs, run its Command in pbuild's sandbox, upload the
outputs, and build the ActionResult.

The action runs as a local build would run it (:mod:`pbuild.engine.remote.actionformat`): the
input root is the exec root, mounted read-only at the sandbox's ``/execroot``; writable are only
the outputs' parent folders (and each output directory); no network; the Action's timeout; on a
toolchain, the toolchain tree as ``/``, else the worker's host root with the worker's cache hidden.

Output paths are relative to the Command's working directory (REAPI); an output that is a
symlink or neither file nor folder is not reported (never followed: it could name a file of
the worker). Output directories are uploaded as ``Tree`` messages.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pbuild.engine.remote import actionformat
from pbuild.engine.remote._execwire import (
    Action,
    Command,
    Directory,
    DirectoryNode,
    FileNode,
    SymlinkNode,
    Tree,
)
from pbuild.engine.remote._wire import (
    TIMESTAMP_FIELDS,
    ActionResult,
    Digest,
    ExecutedActionMetadata,
    OutputDirectory,
    OutputFile,
    Timestamp,
    WireError,
)
from pbuild.engine.remote.worker.cas import BlobMissing, CasError, WorkerCas
from pbuild.engine.remote.worker.inputroot import InputRootError, InputTree, lay_out, read_tree

# google.rpc.Code values a lease completes with.
CODE_OK = 0
CODE_CANCELLED = 1
CODE_INVALID_ARGUMENT = 3
CODE_DEADLINE_EXCEEDED = 4
CODE_FAILED_PRECONDITION = 9
CODE_INTERNAL = 13
CODE_UNAVAILABLE = 14


@dataclass(frozen=True)
class Timings:
    """Where a lease's time went, in seconds (the worker's log line and the benchmark)."""

    fetch_s: float = 0.0
    sandbox_s: float = 0.0
    upload_s: float = 0.0
    bytes_fetched: int = 0


@dataclass(frozen=True)
class Outcome:
    """How a lease ends: ``status_code`` 0 with a result, or a google.rpc code and a message
    (``missing``: the blobs a FAILED_PRECONDITION names)."""

    status_code: int
    message: str = ""
    result: ActionResult | None = None
    missing: tuple[Digest, ...] = ()
    timings: Timings = Timings()

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code if self.result is not None else None


class Cancelled(Exception):
    """The lease was cancelled (by the server, or the worker is stopping) before it finished."""


class Kill:
    """The handle through which a lease's sandbox is ended: the session sets it from another
    thread; the sandbox's pid is known only while it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.requested = threading.Event()

    def started(self, pid: int) -> None:
        with self._lock:
            self._pid = pid
            if self.requested.is_set():
                self._kill()

    def finished(self) -> None:
        with self._lock:
            self._pid = None

    def kill(self) -> None:
        with self._lock:
            self.requested.set()
            self._kill()

    def _kill(self) -> None:
        if self._pid is not None:
            import signal

            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _now() -> Timestamp:
    return Timestamp.of(time.time())


class Executor:
    """Runs leases for one worker (thread-safe: each lease has its own folder)."""

    def __init__(self, cas: WorkerCas, cache_dir: str, worker_name: str, *,
                 tree_for: Callable[[tuple[tuple[str, str], ...], str], str]) -> None:
        self.cas = cas
        self.cache_dir = cache_dir
        self.worker_name = worker_name
        self.work_top = os.path.join(cache_dir, "worker", "exec")
        self._tree_for = tree_for  # (layer (blob, meta) paths, name) -> unpacked toolchain tree

    def run(self, action_digest: Digest, action: Action, kill: Kill) -> Outcome:
        """Do the lease's work; never raises for the action's or the server's trouble."""
        stamps: list[tuple[str, Timestamp]] = [("worker_start", _now())]
        work = os.path.join(self.work_top, uuid.uuid4().hex)
        t0 = time.perf_counter()
        fetched = 0
        try:
            os.makedirs(work)
            stamps.append(("input_fetch_start", _now()))
            # One round trip for both: the Command and the input root's top Directory.
            self.cas.fetch((action.command_digest, action.input_root_digest))
            try:
                command = Command.decode(self.cas.read(action.command_digest))
            except (WireError, UnicodeDecodeError) as exc:
                return Outcome(CODE_INVALID_ARGUMENT, f"the Command {action.command_digest.hash[:12]}… is "
                                                      f"undecodable ({exc})")
            problem = _check_platform(action.platform or command.platform)
            if problem is not None:
                return Outcome(CODE_FAILED_PRECONDITION, problem)
            if not command.arguments:
                return Outcome(CODE_INVALID_ARGUMENT, "the Command has no arguments")
            tree = read_tree(self.cas, action.input_root_digest)
            fetched = self.cas.fetch(tree.blobs())
            plan = _plan_outputs(command)
            exec_root = os.path.join(work, "root")
            os.mkdir(exec_root)
            lay_out(self.cas, tree, exec_root, plan.writable)
            root = self._toolchain(tree)
            stamps.append(("input_fetch_completed", _now()))
            t1 = time.perf_counter()
            if kill.requested.is_set():
                raise Cancelled
            stamps.append(("execution_start", _now()))
            sandbox = _run(command, exec_root, plan.writable, work, root, action.timeout_s,
                           hide=(self.cache_dir,), kill=kill)
            stamps.append(("execution_completed", _now()))
            t2 = time.perf_counter()
            if kill.requested.is_set():
                raise Cancelled
            stamps.append(("output_upload_start", _now()))
            result = self._collect(command, plan, exec_root, work, sandbox)
            stamps.append(("output_upload_completed", _now()))
            stamps.append(("worker_completed", _now()))
            t3 = time.perf_counter()
            metadata = ExecutedActionMetadata(self.worker_name, tuple(sorted(
                stamps, key=lambda s: TIMESTAMP_FIELDS.index(s[0]))))
            result = ActionResult(result.output_files, result.exit_code, result.stdout_digest,
                                  result.stderr_digest, False, result.output_directories, metadata)
            timings = Timings(t1 - t0, t2 - t1, t3 - t2, fetched)
            if sandbox.timed_out:
                return Outcome(CODE_DEADLINE_EXCEEDED, f"the action ran longer than its timeout of "
                                                       f"{action.timeout_s:g} s", result, timings=timings)
            if sandbox.setup_error is not None:
                return Outcome(CODE_INTERNAL, f"worker {self.worker_name}: {sandbox.setup_error}", result,
                               timings=timings)
            return Outcome(CODE_OK, "", result, timings=timings)
        except Cancelled:
            return Outcome(CODE_CANCELLED, "cancelled")
        except InputRootError as exc:
            return Outcome(CODE_INVALID_ARGUMENT, f"action {action_digest.hash[:12]}…: {exc}")
        except BlobMissing as exc:
            return Outcome(CODE_FAILED_PRECONDITION, str(exc), missing=exc.digests)
        except CasError as exc:
            return Outcome(CODE_UNAVAILABLE, f"worker {self.worker_name}: {exc}")
        except _Refused as exc:
            return Outcome(CODE_INVALID_ARGUMENT, f"action {action_digest.hash[:12]}…: {exc}")
        except OSError as exc:
            return Outcome(CODE_INTERNAL, f"worker {self.worker_name}: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _toolchain(self, tree: InputTree) -> str | None:
        if not tree.toolchain_layers:
            return None
        layers = tuple((self.cas.path(b.hash), self.cas.path(m.hash)) for b, m in tree.toolchain_layers)
        name = "re-" + hashlib.sha256("\n".join(f"{b.hash} {m.hash}" for b, m in tree.toolchain_layers)
                                      .encode()).hexdigest()[:32]
        try:
            return self._tree_for(layers, name)
        except Exception as exc:  # noqa: BLE001 - the unpacker's errors (hostile tar, bad sidecar)
            raise _Refused(f"its toolchain layers cannot be unpacked: {exc}") from None

    def _collect(self, command: Command, plan: _OutputPlan, exec_root: str, work: str,
                 sandbox: _SandboxOutcome) -> ActionResult:
        files: list[OutputFile] = []
        dirs: list[OutputDirectory] = []
        uploads: list[Digest] = []
        for name, rel in plan.files:
            found = _regular(os.path.join(exec_root, rel))
            if found is None:
                continue
            digest = self.cas.put_file(os.path.join(exec_root, rel))
            files.append(OutputFile(name, digest, bool(found.st_mode & stat.S_IXUSR)))
            uploads.append(digest)
        for name, rel in plan.dirs:
            path = os.path.join(exec_root, rel)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue
            tree_digest, blobs = self._tree(path)
            dirs.append(OutputDirectory(name, tree_digest))
            uploads += [*blobs, tree_digest]
        stdout = self.cas.put_file(sandbox.stdout)
        stderr = self.cas.put_file(sandbox.stderr)
        uploads += [stdout, stderr]
        self.cas.upload(uploads)
        return ActionResult(tuple(sorted(files, key=lambda f: f.path)), sandbox.exit_code, stdout, stderr,
                            False, tuple(sorted(dirs, key=lambda d: d.path)))

    def _tree(self, top: str) -> tuple[Digest, list[Digest]]:
        """The Tree message of output folder ``top`` (stored), and the file blobs it names."""
        children: dict[str, Directory] = {}
        blobs: list[Digest] = []

        def walk(path: str) -> Directory:
            files: list[FileNode] = []
            subdirs: list[DirectoryNode] = []
            links: list[SymlinkNode] = []
            with os.scandir(path) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        digest = self.cas.put_file(entry.path)
                        blobs.append(digest)
                        files.append(FileNode(entry.name, digest, bool(info.st_mode & stat.S_IXUSR)))
                    elif stat.S_ISDIR(info.st_mode):
                        child = walk(entry.path)
                        encoded = child.encode()
                        digest = Digest(hashlib.sha256(encoded).hexdigest(), len(encoded))
                        children.setdefault(digest.hash, child)
                        subdirs.append(DirectoryNode(entry.name, digest))
                    elif stat.S_ISLNK(info.st_mode):
                        links.append(SymlinkNode(entry.name, os.readlink(entry.path)))
            return Directory(tuple(files), tuple(subdirs), tuple(links))

        root = walk(top)
        tree = Tree(root, tuple(children[h] for h in sorted(children)))
        return self.cas.put_bytes(tree.encode()), blobs


class _Refused(Exception):
    """The action is malformed for this worker (bad output path, unusable toolchain)."""


def _check_platform(props: tuple[tuple[str, str], ...]) -> str | None:
    """Why this worker must not run an action with these platform properties, or None."""
    from pbuild.engine.hashing import host_fingerprint

    values = dict(props)
    fmt = values.get(actionformat.PROP_FORMAT)
    if fmt is not None and fmt != actionformat.FORMAT_VERSION:
        return (f"the action is in pbuild action format {fmt!r}; this worker runs format "
                f"{actionformat.FORMAT_VERSION!r} (upgrade the worker or the client)")
    host = values.get(actionformat.PROP_HOST)
    if host is not None and host != host_fingerprint():
        return f"the action needs host {host!r}; this worker is {host_fingerprint()!r}"
    return None


@dataclass(frozen=True)
class _OutputPlan:
    files: tuple[tuple[str, str], ...]  # (the Command's path, exec-root-relative)
    dirs: tuple[tuple[str, str], ...]
    writable: tuple[str, ...]  # exec-root-relative folders the action may write


def _plan_outputs(command: Command) -> _OutputPlan:
    """Resolve and check the output paths (relative to the working directory, REAPI). The split
    fields say which are folders; with only ``output_paths``, each may be either."""
    workdir = _inside(command.working_directory, "the working directory") if command.working_directory else ""

    def resolve(path: str) -> str:
        rel = _inside(posixpath.join(workdir, path) if workdir else path, f"the output path {path!r}")
        if rel == "" or rel.split("/", 1)[0] == actionformat.TOOLCHAIN_DIR.split("/", 1)[0]:
            raise _Refused(f"the output path {path!r} names the root or the toolchain folder")
        return rel

    if command.output_files or command.output_directories:
        files = tuple((p, resolve(p)) for p in command.output_files)
        dirs = tuple((p, resolve(p)) for p in command.output_directories)
        # As locally: a file's parent folder is writable, an output folder is itself.
        writable = {posixpath.dirname(rel) for _, rel in files} | {rel for _, rel in dirs}
    else:
        both = tuple((p, resolve(p)) for p in command.output_paths)
        files, dirs = both, both
        writable = {posixpath.dirname(rel) for _, rel in both}
    return _OutputPlan(files, dirs, tuple(sorted(writable)))


def _inside(path: str, what: str) -> str:
    """``path`` normalized, refused when absolute or leaving the exec root."""
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in path:
        raise _Refused(f"{what} leaves the input root")
    return "" if norm == "." else norm


def _regular(path: str) -> os.stat_result | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


@dataclass(frozen=True)
class _SandboxOutcome:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    setup_error: str | None


def _run(command: Command, exec_root: str, writable: tuple[str, ...], work: str, root: str | None,
         timeout_s: float | None, *, hide: tuple[str, ...], kill: Kill) -> _SandboxOutcome:
    from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

    stdout = os.path.join(work, "stdout")
    stderr = os.path.join(work, "stderr")
    request = SandboxRequest(
        argv=command.arguments,
        env=dict(command.environment),
        exec_root=exec_root,
        writable_dirs=writable,
        workdir=_inside(command.working_directory, "the working directory") if command.working_directory else "",
        hide_paths=() if root is not None else hide,
        stdout_path=stdout,
        stderr_path=stderr,
        timeout_s=timeout_s if timeout_s else None,
        network=False,
        root=root,
        on_start=kill.started,
    )
    try:
        result = run_sandboxed(request)
    finally:
        kill.finished()
    if result.error is not None:
        # The action never ran: say why where its output would have been.
        with open(stderr, "ab") as f:
            f.write(f"pbuild worker: {result.error}\n".encode())
    return _SandboxOutcome(result.exit_code, stdout, stderr, result.timed_out, result.error)
