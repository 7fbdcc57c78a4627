"""Running one process action: preparing its exec root, sandboxing it, explaining failures.

The exec root mirrors the workspace layout but holds only the declared inputs. Inputs are hard
links to read-only CAS blobs or source files (the sandbox mounts the exec root read-only);
inputs that sit in a folder the action may write are copies, so an action can never write
through a link into the cache or the user's sources.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pbuild.engine.api import OUT_DIR, ProcessAction

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(source_date_epoch: str) -> dict[str, str]:
    """The fixed environment every process action starts from.

    ``source_date_epoch`` is the validated epoch (:func:`pbuild.lib.determinism.source_date_epoch`)
    in decimal, never the raw variable: it is part of every action key.
    """
    return {
        "PATH": SANDBOX_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": source_date_epoch,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONHASHSEED": "0",
    }


@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int
    stdout_path: str
    stderr_path: str
    duration_s: float
    setup_error: str | None = None


def link_or_copy(source: str, dest: str, *, copy: bool) -> None:
    if not copy:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass
    shutil.copyfile(source, dest)
    if os.access(source, os.X_OK):
        os.chmod(dest, 0o755)


def prepare_exec_root(
    exec_root: str,
    action: ProcessAction,
    input_sources: Mapping[str, str],
    source_paths: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """Lay out the inputs (``path -> host file``) and output folders; return the writable folders.

    Source files (``source_paths``) are copied, not linked: a hard link changes the inode's ctime,
    which would make every source an action read look modified to the next build's stat checks.
    """
    writable: set[str] = set()
    for output in action.outputs:
        parent = output.path if output.is_directory else os.path.dirname(output.path)
        writable.add(parent)
    made: set[str] = set()
    if action.workdir:
        os.makedirs(os.path.join(exec_root, action.workdir), exist_ok=True)
    for f in action.inputs:
        if f.is_directory:  # may be empty, so it would not appear through its files
            os.makedirs(os.path.join(exec_root, f.path), exist_ok=True)
    for rel in sorted(writable):
        os.makedirs(os.path.join(exec_root, rel), exist_ok=True)
        made.add(rel)
    for rel, source in input_sources.items():
        dest = os.path.join(exec_root, rel)
        parent = os.path.dirname(rel)
        if parent not in made:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            made.add(parent)
        inside_writable = any(rel == w or rel.startswith(w + "/") for w in writable)
        link_or_copy(source, dest, copy=inside_writable or rel in source_paths)
    return tuple(sorted(writable))


def run_process(
    action: ProcessAction,
    exec_root: str,
    writable: Sequence[str],
    env: Mapping[str, str],
    hide_paths: Sequence[str],
    log_dir: str,
    *,
    root: str | None = None,
) -> ProcessOutcome:
    """Run the action sandboxed (on ``root``, its toolchain's tree, else the host's root);
    stdout/stderr land in ``log_dir``."""
    from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

    stdout_path = os.path.join(log_dir, "stdout")
    stderr_path = os.path.join(log_dir, "stderr")
    request = SandboxRequest(
        argv=tuple(action.argv),
        env=dict(env),
        exec_root=exec_root,
        writable_dirs=tuple(writable),
        workdir=action.workdir,
        hide_paths=() if root is not None else tuple(hide_paths),
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        timeout_s=action.timeout_s,
        network=False,
        root=root,
    )
    result = run_sandboxed(request)
    return ProcessOutcome(result.exit_code, stdout_path, stderr_path, result.duration_s, result.error)


_NETWORK_SIGNS = re.compile(
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"Could not resolve host|No address associated with hostname|getaddrinfo failed|Connection refused",
    re.IGNORECASE,
)
_PATHISH = re.compile(r"[\w./@+-]+")
def missing_program(stderr: str, exit_code: int, action: ProcessAction) -> str | None:
    """For an action on a toolchain that failed for want of a program: which, and how to add it."""
    from pbuild.tools.sandbox import missing_from_toolchain

    if action.toolchain is None:
        return None
    name = missing_from_toolchain(stderr, exit_code)
    if name is None:
        return None
    label = action.toolchain.label
    return (f"the toolchain {label} has no program {name!r}: add the Debian package that provides it "
            f"to the packages of {label} (e.g. `apt-file search bin/{name.rsplit('/', 1)[-1]}` names it), "
            "then run `./pbuild lock --debian`")


def explain_failure(stderr: str, action: ProcessAction, workspace_root: str) -> str | None:
    """A sentence on why a sandboxed action may have failed, or None when nothing stands out."""
    from pbuild.tools.sandbox import EXEC_ROOT  # where the sandbox mounts the exec root

    declared = {f.path for f in action.inputs} | {f.path for f in action.outputs}
    if "No such file or directory" in stderr or "cannot open" in stderr or "can't open" in stderr:
        base = os.path.join(workspace_root, action.workdir) if action.workdir else workspace_root
        for token in _PATHISH.findall(stderr):
            token = token.strip("'\".:,")
            if token.startswith(EXEC_ROOT + "/"):
                token = token[len(EXEC_ROOT) + 1:]
            if not token or token.startswith(OUT_DIR + "/.") or len(token) > 300:
                continue
            for candidate in (os.path.normpath(os.path.join(base, token)), os.path.normpath(os.path.join(workspace_root, token))):
                if not candidate.startswith(workspace_root + os.sep):
                    continue
                rel = os.path.relpath(candidate, workspace_root)
                if rel not in declared and os.path.isfile(candidate):
                    return (
                        f"it reads {rel}, which exists in the workspace but is not a declared input: "
                        "actions see only their declared inputs; add it to srcs (or tools)"
                    )
    if _NETWORK_SIGNS.search(stderr):
        return "actions run without network access; fetch inputs with a pinned hash instead"
    return None
