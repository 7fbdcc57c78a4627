"""pbuild's action format on a REAPI worker: how a process action travels as Command, Action and
input root, the contract between :mod:`pbuild.engine.remote` (the client) and ``pbuild worker``.

Version 1:

* the input root is the action's exec root: every declared input at its exec-root-relative path,
  directory inputs and the working directory present even when empty;
* an action on a toolchain carries the toolchain's layer files (not its unpacked tree: layers are
  few, compressed and already content-addressed) at ``.pbuild/toolchain/<NN>/blob`` and
  ``.pbuild/toolchain/<NN>/meta`` (``NN`` two digits from 00, bottom layer first); the worker
  unpacks them once per tree into its own cache, as a local build does, and the action sees that
  tree as ``/``. Without that folder the action runs on the worker's host root;
* the Command's arguments, environment (sorted), working directory and output paths are the
  action's; the outputs' parent folders are the writable ones, as locally. As REAPI defines
  them, output paths (in the Command and in the ActionResult) are relative to the working
  directory, so a genrule's (working directory ``pkg``) read ``../pbuild-out/pkg/x``:
  :func:`command_path` and :func:`result_path` convert;
* the platform properties below are in both the Command and the Action, so that a server
  matches actions to workers that advertise the same values.
"""

from __future__ import annotations

import posixpath

FORMAT_VERSION = "1"
TOOLCHAIN_DIR = ".pbuild/toolchain"

PROP_OS = "OSFamily"
PROP_ISA = "ISA"
PROP_FORMAT = "pbuild-action-format"
PROP_HOST = "pbuild-host"  # the host fingerprint of an action that runs host tools

OS_FAMILY = "linux"


def isa() -> str:
    """This machine's ISA in REAPI's spelling (``x86-64``, ``aarch64``)."""
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "x86-64", "amd64": "x86-64", "arm64": "aarch64"}.get(machine, machine)


def platform_properties(host_fingerprint: str | None) -> tuple[tuple[str, str], ...]:
    """The properties of an action, sorted by name as REAPI requires."""
    props = {PROP_OS: OS_FAMILY, PROP_ISA: isa(), PROP_FORMAT: FORMAT_VERSION}
    if host_fingerprint is not None:
        props[PROP_HOST] = host_fingerprint
    return tuple(sorted(props.items()))


def layer_paths(index: int) -> tuple[str, str]:
    """Where layer ``index`` (0 = bottom) of the toolchain sits in the input root: (blob, meta)."""
    folder = f"{TOOLCHAIN_DIR}/{index:02d}"
    return f"{folder}/blob", f"{folder}/meta"


def command_path(path: str, workdir: str) -> str:
    """An exec-root-relative output path as the Command names it (relative to ``workdir``)."""
    return posixpath.relpath(path, workdir) if workdir else path


def result_path(path: str, workdir: str) -> str:
    """An ActionResult's output path (relative to ``workdir``) as an exec-root-relative one."""
    return posixpath.normpath(posixpath.join(workdir, path)) if workdir else path
