"""Remote caches: Bazel's HTTP protocol and REAPI v2 over gRPC.

The engine keeps xxh3-128 as its local key; remote caches speak sha256. The engine computes an
action's ``key_sha256`` itself (sha256 of its canonical action-key bytes) and, on a local AC
miss, asks :meth:`RemoteCache.get_action_result` and then :meth:`RemoteCache.fetch_blob` for each
output (if any fetch fails it runs the action locally). After a successful local execution, and
when uploads are on, it calls :meth:`RemoteCache.upload_action`.

A remote cache never fails a build: a server that is down, slow, refuses credentials or serves
damaged bytes costs one warning and the work happens locally. Downloads are verified by sha256
and size before anything becomes visible at their destination.

Implementations live in private modules (``_http``, ``_grpc``) and are imported only when a
remote is configured, so a build without one never loads grpc.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import argparse

    from pbuild.engine.remote._index import Sha256Index

# This module is imported by every CLI command (to register the flags): it stays import-light.
# Everything heavy (hashlib, urllib, grpc, the indexes) is imported where it is used.

__all__ = [
    "ExecInput",
    "ExecutionFailed",
    "ExecutorUnavailable",
    "RemoteActionResult",
    "RemoteExecRequest",
    "RemoteExecution",
    "RemoteExecutor",
    "RemoteCache",
    "RemoteOutput",
    "RemoteSettings",
    "RemoteStats",
    "Sha256Index",
    "add_remote_flags",
    "connect_executor",
    "open_remote",
    "resolve_remote_settings",
]


@dataclass(frozen=True)
class RemoteOutput:
    """One output file of an action as the remote knows it."""

    path: str  # workspace-relative output path (pbuild-out/...)
    sha256: str  # hex
    size: int
    executable: bool


@dataclass(frozen=True)
class RemoteActionResult:
    """What an action produced: its output files, exit code and captured stdout/stderr blobs.

    ``stdout_size``/``stderr_size`` complete the digests of the captured streams (REAPI digests
    are hash plus size); they are filled in on results read from a remote, and on upload the
    sizes are taken from the local files when left at ``None``.
    """

    outputs: tuple[RemoteOutput, ...]
    exit_code: int
    stdout_sha256: str | None = None
    stderr_sha256: str | None = None
    stdout_size: int | None = None
    stderr_size: int | None = None


@dataclass(frozen=True)
class RemoteSettings:
    """Where the remote cache is and how to talk to it (see :func:`resolve_remote_settings`)."""

    url: str | None  # http(s)://HOST[:PORT]/PREFIX or grpc(s)://HOST:PORT; None = no remote
    instance_name: str = ""
    upload: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 60.0
    retries: int = 3
    # grpc(s)://HOST:PORT of a REAPI Execution service; None = actions run here. When set and
    # ``url`` is not, the executor's endpoint is the cache too.
    executor: str | None = None
    local_fallback: bool = False  # an unreachable executor: one warning, then run locally


@dataclass(frozen=True)
class RemoteStats:
    """Counters of one build's traffic with the remote, for the build summary."""

    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    bytes_downloaded: int = 0
    blobs_downloaded: int = 0
    action_results_uploaded: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    disabled: bool = False  # the remote stopped being used during the build after failures
    executed: int = 0  # actions a remote executor ran for this build


class RemoteCache(Protocol):
    """A remote action cache plus content-addressed store. Safe to call from several threads."""

    name: str  # how messages name the remote: its URL without credentials, and the instance

    def get_action_result(self, key_sha256: str) -> RemoteActionResult | None:
        """The cached result of an action, or ``None`` (miss, or the remote is unusable)."""
        ...

    def fetch_blob(self, sha256: str, size: int, dest_path: str) -> bool:
        """Download a blob to ``dest_path``, verified by sha256 and size, written atomically.

        Returns ``False`` (after one warning) on any failure; ``dest_path`` is then untouched.
        A blob the server sent wrong bytes for is written over by the next upload that names it.
        """
        ...

    def upload_action(self, key_sha256: str, result: RemoteActionResult, blobs: Mapping[str, str]) -> None:
        """Upload the blobs the remote lacks (``blobs``: sha256 -> local path), then the result.

        Never raises for server trouble; does nothing when uploads are off.
        """
        ...

    def stats(self) -> RemoteStats:
        """The traffic so far."""
        ...

    def note_present(self, sha256s: Iterable[str]) -> None:
        """Blobs known to be on this remote already (an executor on the same endpoint wrote
        them): the next upload naming them skips asking."""
        ...

    @property
    def upload_enabled(self) -> bool:
        """Whether :meth:`upload_action` would upload anything (lets the caller skip hashing)."""
        ...

    def close(self) -> None:
        """Persist what is known to be present remotely and release connections."""
        ...


@dataclass(frozen=True)
class ExecInput:
    """One input file of a remotely executed action: where it sits in the input root and where
    its bytes are on this machine (a checked CAS blob or a source file)."""

    path: str  # exec-root-relative, as the action sees it
    local_path: str
    digest: str  # pbuild's xxh3 digest (the key material's); the executor maps it to sha256
    size: int
    executable: bool


@dataclass(frozen=True)
class RemoteExecRequest:
    """Everything a worker needs to run one process action as it would run here.

    The input root is laid out as :mod:`pbuild.engine.remote.actionformat` describes: the
    inputs at their paths, ``empty_dirs`` created, and the toolchain's layer files (bottom
    first) under its toolchain folder; an action without toolchain runs on the worker's host
    root, and ``host_fingerprint`` (its key's) goes into the platform so that only a worker on
    an identical host takes it.
    """

    label: str  # for messages
    mnemonic: str
    key_sha256: str  # the action's remote cache key (the outputs are cached under it too)
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # the full environment, sorted
    workdir: str
    output_files: tuple[str, ...]
    output_dirs: tuple[str, ...]
    inputs: tuple[ExecInput, ...]
    empty_dirs: tuple[str, ...]
    toolchain_layers: tuple[tuple[ExecInput, ExecInput], ...]  # (blob, sidecar JSON), bottom first
    host_fingerprint: str | None
    timeout_s: float | None
    # Run it even if the server's action cache has a result (the one it had was wrong).
    skip_cache_lookup: bool = False


@dataclass(frozen=True)
class RemoteExecution:
    """What a remote execution returned: the result (output directories flattened into their
    files below the directory's path) and which worker ran it, when the server says."""

    result: RemoteActionResult
    worker: str = ""
    cached: bool = False  # the server answered from its action cache without running it


class ExecutorUnavailable(Exception):
    """The executor cannot be used (unreachable, refused, no Execution service): the caller
    falls back to local execution when allowed, else fails the action with this message."""


class ExecutionFailed(Exception):
    """The executor was usable but this action did not complete on it (it timed out, or the
    worker's result is unusable: hostile paths, a Tree that is not what it claims): the caller
    fails the action with this message. Not a fallback case: running it here would only hide
    the problem."""


class RemoteExecutor(Protocol):
    """A REAPI Execution service. Safe to call from several threads."""

    name: str

    def stats(self) -> RemoteStats:
        """The traffic so far (``executed``: actions it ran for this build)."""
        ...

    def execute(self, request: RemoteExecRequest) -> RemoteExecution:
        """Upload what the server lacks, run the action remotely, return its (unverified) result.

        Raises :class:`ExecutorUnavailable` when the service cannot be used; an action that ran
        and failed is a result with a non-zero exit code, not an exception.
        """
        ...

    def fetch_blob(self, sha256: str, size: int, dest_path: str) -> bool:
        """Download an output blob, verified by sha256 and size, written atomically (as
        :meth:`RemoteCache.fetch_blob`)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def __getattr__(name: str) -> Any:
    """``Sha256Index`` is loaded on first use (PEP 562), keeping the import of this module cheap."""
    if name == "Sha256Index":
        from pbuild.engine.remote._index import Sha256Index

        return Sha256Index
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_remote(settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> RemoteCache | None:
    """Connect to the remote cache ``settings`` names, or return ``None`` when there is none.

    An unusable remote (unknown scheme, unreachable gRPC server, no SHA256 support) gives one
    warning through ``warn`` and ``None``: the build then runs locally.
    """
    if not settings.url:
        return None
    scheme = settings.url.split("://", 1)[0].lower() if "://" in settings.url else ""
    if scheme in ("http", "https"):
        from pbuild.engine.remote._http import HttpRemoteCache

        return HttpRemoteCache(settings, cache_dir=cache_dir, warn=warn)
    if scheme in ("grpc", "grpcs"):
        from pbuild.engine.remote._grpc import open_grpc_remote

        return open_grpc_remote(settings, cache_dir=cache_dir, warn=warn)
    warn(f"remote cache {settings.url!r}: unsupported scheme (expected http://, https://, grpc:// or "
         f"grpcs://); building without a remote cache")
    return None


class _Unreachable:
    """The executor of a build whose start found it unusable: every execution raises
    :class:`ExecutorUnavailable` with that reason (the scheduler falls back or fails)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def execute(self, request: RemoteExecRequest) -> RemoteExecution:
        raise ExecutorUnavailable(self.reason)

    def fetch_blob(self, sha256: str, size: int, dest_path: str) -> bool:
        return False

    def stats(self) -> RemoteStats:
        return RemoteStats()

    def close(self) -> None:
        pass


def connect_executor(settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None],
                     sha_index: Sha256Index) -> RemoteExecutor:
    """The executor ``settings.executor`` names, checked: one that cannot run actions (down,
    no Execution service, no SHA256) is returned as one whose every execution raises
    :class:`ExecutorUnavailable` with the reason, so that only a build that has something to run
    remotely falls back or fails, and says why."""
    from pbuild.engine.remote._base import display_url
    from pbuild.engine.remote._exec import open_executor

    assert settings.executor
    try:
        return open_executor(settings, cache_dir=cache_dir, warn=warn, sha_index=sha_index)
    except ExecutorUnavailable as exc:
        name = display_url(settings.executor)
        if settings.instance_name:
            name += f" (instance {settings.instance_name!r})"
        return _Unreachable(name, str(exc))


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--remote-cache``, ``--remote-instance-name``, ``--[no-]remote-upload``,
    ``--remote-header``, ``--remote-timeout``, ``--remote-executor`` and
    ``--[no-]remote-local-fallback`` to a sub-command's parser."""
    from pbuild.engine.remote._settings import add_remote_flags as add

    add(parser)


def resolve_remote_settings(
    args: argparse.Namespace, workspace_config: Mapping[str, Any], user_config: Mapping[str, Any]
) -> RemoteSettings:
    """Merge flags over ``WORKSPACE.toml`` ``[remote]`` over the user config file's ``[remote]``.

    ``workspace_config`` and ``user_config`` are the parsed TOML documents (their ``remote``
    table is read). Raises :class:`pbuild.engine.errors.WorkspaceError` for a bad value.
    """
    from pbuild.engine.remote._settings import resolve

    return resolve(args, workspace_config, user_config)
