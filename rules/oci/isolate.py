"""Run a heavy in-process action in a fresh interpreter, so it holds no lock the engine needs.

Layer writing is CPU work in Python (tar headers, unpacking .debs, installing wheels) between
stretches that release the GIL (zlib, lzma, hashing). Two such actions in the engine's threads
take turns on one GIL and use one core between them; in their own processes they use all of
them. The function runs with an :class:`~pbuild.engine.api.ActionIO` over the same paths, and a
:class:`~pbuild.engine.errors.PbuildError` it raises is raised again here with its message.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pbuild.engine.api import ActionIO, Label
from pbuild.engine.errors import PbuildError

#: A folder named by this variable gets a cProfile dump of each isolated action
#: (``<function>-<pid>.prof``), for bench/ and performance work; unset, nothing is profiled.
PROFILE_ENV = "PBUILD_PROFILE_ISOLATED"

#: Exit status a worker uses for a user error (its JSON description is on stdout).
_USER_ERROR = 3


def run_isolated(function: Callable[[ActionIO, Mapping[str, Any]], None], io: ActionIO,
                 params: Mapping[str, Any], outputs: Sequence[str]) -> None:
    """Call ``function(io, params)`` in a new ``python`` process; ``outputs`` are the output paths it writes."""
    payload = {
        "function": f"{function.__module__}:{function.__qualname__}",
        "inputs": dict(io.input_paths),
        "outputs": {name: io.output_path(name) for name in outputs},
        "tmpdir": io.tmpdir,
        "label": str(io.label),
        "jobs": io.jobs,
        "toolchain_root": io.toolchain_root,
        "params": dict(params),
    }
    proc = subprocess.run([sys.executable, "-c", "from pbuild.rules.oci.isolate import main; main()"],
                          input=json.dumps(payload).encode(), capture_output=True, check=False)
    if proc.returncode == _USER_ERROR:
        error = json.loads(proc.stdout)
        raise _error_class(error["type"])(error["message"], label=io.label, hint=error.get("hint"))
    if proc.returncode != 0:
        raise RuntimeError(f"isolated action {payload['function']} failed with exit code {proc.returncode}:\n"
                           + proc.stderr.decode("utf-8", "replace"))


def _error_class(name: str) -> type[PbuildError]:
    """The PbuildError subclass called ``name`` (the worker's), else PbuildError itself."""
    pending: list[type[PbuildError]] = [PbuildError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending += cls.__subclasses__()
    return PbuildError


def main() -> None:
    """The worker: read the payload from stdin, run the function, report a user error as JSON."""
    payload = json.load(sys.stdin)
    module, _, name = payload["function"].partition(":")
    function = getattr(importlib.import_module(module), name)
    io = ActionIO(payload["inputs"], payload["outputs"], payload["tmpdir"], Label.parse(payload["label"]),
                  jobs=payload["jobs"], toolchain_root=payload.get("toolchain_root"))
    try:
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:
            _profiled(function, io, payload["params"], profile_dir)
        else:
            function(io, payload["params"])
    except PbuildError as exc:
        json.dump({"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}, sys.stdout)
        sys.stdout.flush()
        raise SystemExit(_USER_ERROR) from None


def _profiled(function: Callable[[ActionIO, Mapping[str, Any]], None], io: ActionIO,
              params: Mapping[str, Any], folder: str) -> None:
    """``function(io, params)`` under cProfile, its statistics dumped into ``folder``."""
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(function, io, params)
    finally:
        os.makedirs(folder, exist_ok=True)
        profiler.dump_stats(os.path.join(folder, f"{function.__name__.lstrip('_')}-{os.getpid()}.prof"))
