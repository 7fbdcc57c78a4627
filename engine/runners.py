"""The action runners: a process action in the sandbox, an in-process action as a function call.

Each runs one action in its own work folder (which the caller makes and removes) and returns the
collected outputs, already in the CAS; a failure is a :class:`BuildFailed` that says what the
action printed and, where pbuild can tell, why it failed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import traceback
from collections.abc import Mapping, Sequence

from pbuild.engine.api import ActionIO, InProcessAction, ProcessAction
from pbuild.engine.errors import BuildFailed, PbuildError
from pbuild.engine.execroot import (
    ProcessOutcome,
    explain_failure,
    missing_program,
    prepare_exec_root,
    run_process,
)
from pbuild.engine.oserrors import from_os_error, full_filesystem
from pbuild.engine.outputs import collect_outputs
from pbuild.engine.store import ActionResult, LocalStore
from pbuild.lib.atomicio import write_text
from pbuild.lib.errors import UserError
from pbuild.lib.oci.blobstore import BlobStore

_TAIL = 60  # lines of a failing action's stderr shown to the user


def run_process_action(action: ProcessAction, work: str, *, store: LocalStore, workspace_root: str,
                       input_sources: Mapping[str, str], env: Mapping[str, str],
                       hide_paths: Sequence[str], toolchain_root: str | None) -> ActionResult:
    """Run ``action`` in the sandbox on an exec root below ``work`` built from ``input_sources``
    (declared input path -> where it can be read on the host); ``env`` is its full environment."""
    exec_root = os.path.join(work, "execroot")
    logs = os.path.join(work, "logs")
    os.makedirs(exec_root)
    os.makedirs(logs)
    sources = frozenset(f.path for f in action.inputs if f.is_source)
    writable = prepare_exec_root(exec_root, action, input_sources, sources)
    outcome = run_process(action, exec_root, writable, env, hide_paths, logs, root=toolchain_root)
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
        raise process_failure(action, outcome, workspace_root)
    return collect_outputs(action, exec_root, store)


def process_failure(action: ProcessAction, outcome: ProcessOutcome, workspace_root: str) -> BuildFailed:
    """The error of a process action that exited non-zero, from its captured stdout and stderr
    (files here, whether it ran here or on a remote worker): what it printed, and why when
    pbuild can tell. A test action's log is written too."""
    with open(outcome.stderr_path, "rb") as handle:
        stderr = handle.read().decode("utf-8", "replace")
    with open(outcome.stdout_path, "rb") as handle:
        stdout = handle.read().decode("utf-8", "replace")
    if action.stdout_to:
        # test failures: the log is the story; keep it too
        log = os.path.join(workspace_root, action.stdout_to)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        write_text(log, stdout + stderr)
    text = "\n".join((stdout + stderr).rstrip().splitlines()[-_TAIL:])
    why = missing_program(stderr, outcome.exit_code, action) or explain_failure(stderr + stdout, action, workspace_root)
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


def run_in_process_action(action: InProcessAction, work: str, *, store: LocalStore, workspace_root: str,
                          jobs: int, toolchain_root: str | None, oci_blobs: BlobStore | None = None) -> ActionResult:
    """Call ``action``'s function on its inputs (read in the workspace) and outputs below ``work``."""
    out_top = os.path.join(work, "out")
    outputs: dict[str, str] = {}
    for output in action.outputs:
        dest = os.path.join(out_top, output.path)
        os.makedirs(dest if output.is_directory else os.path.dirname(dest), exist_ok=True)
        outputs[output.path] = dest
    inputs = {f.path: os.path.join(workspace_root, f.path) for f in action.inputs}
    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp)
    io = ActionIO(inputs, outputs, tmp, action.owner, jobs=jobs, toolchain_root=toolchain_root, oci_blobs=oci_blobs)
    try:
        action.function(io, action.params)
    except PbuildError as exc:
        if exc.label is None:
            exc.label = action.owner
        raise
    except UserError as exc:  # a shared library's error: said with the target it struck
        raise PbuildError.of(exc, label=action.owner) from None
    except Exception as exc:  # a crashing rule function is reported, with its traceback, as a failed action
        error = from_os_error(exc, near=(work,), cache_dir=store.root, label=action.owner)
        if error is not None:  # the machine's fault (a full disk), not the rule's
            raise error from None
        detail = "".join(traceback.format_exception(exc)[-6:])
        raise BuildFailed(
            f"{action.mnemonic} crashed: {type(exc).__name__}: {exc}\n{detail}",
            label=action.owner,
            hint=f"this is a bug in {action.function_name}",
        ) from None
    return collect_outputs(action, out_top, store)


def _quote(arg: str) -> str:
    text = shlex.quote(arg)
    return text if len(text) < 400 else text[:400] + "...'"
