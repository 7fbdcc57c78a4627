"""What the remote cache tests share: a warning collector, the remotes a test opened (closed when it
ends), and action results made of real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pbuild.engine.remote import RemoteActionResult, RemoteCache, RemoteOutput


class Warnings(list[str]):
    """Collects the warnings a remote gives (its ``warn`` callback)."""

    def __call__(self, message: str) -> None:
        self.append(message)


OPENED: list[RemoteCache] = []  # the remotes the running test opened; close_opened() closes them


def close_opened() -> None:
    """Close every remote in OPENED (their keep-alive sockets)."""
    while OPENED:
        OPENED.pop().close()


def action_result(tmp: Path, name: str, contents: dict[str, bytes], *, executable: frozenset[str] = frozenset(),
            stdout: bytes | None = None) -> tuple[str, RemoteActionResult, dict[str, str]]:
    """An action result of real files on disk (below ``tmp``) and their real digests: its key, the
    result, and the blobs (sha256 -> local path) an upload sends."""
    tmp.mkdir(parents=True, exist_ok=True)
    outputs = []
    blobs = {}
    for path, data in sorted(contents.items()):
        local = tmp / hashlib.sha256(data).hexdigest()
        local.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = str(local)
        outputs.append(RemoteOutput(path, sha, len(data), path in executable))
    stdout_sha = None
    if stdout is not None:
        stdout_sha = hashlib.sha256(stdout).hexdigest()
        (tmp / stdout_sha).write_bytes(stdout)
        blobs[stdout_sha] = str(tmp / stdout_sha)
    key = hashlib.sha256(name.encode()).hexdigest()
    result = RemoteActionResult(tuple(outputs), 0, stdout_sha256=stdout_sha,
                                stdout_size=len(stdout) if stdout is not None else None)
    return key, result, blobs
