"""The context a rule family's command (``COMMANDS``) runs in: the engine's side of
:class:`pbuild.engine.api.CommandContext`.

Its own module, import-light, because a family command that builds nothing (`pbuild images`,
`pull`, `ps`) should not load the build machinery just to start: :meth:`build_one` loads it
when a command asks for a build.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pbuild.engine.api import BuiltTarget
from pbuild.engine.errors import PbuildError
from pbuild.engine.workspace import Workspace, default_cache_dir, find_workspace
from pbuild.lib.filelock import FileLock

if TYPE_CHECKING:
    from pbuild.engine.build import BuildRequest
    from pbuild.lib.oci.blobstore import BlobStore


@dataclass
class EngineCommandContext:
    """The engine's side of a family's command (:class:`pbuild.engine.api.CommandContext`)."""

    args: argparse.Namespace
    cwd: str
    # The build request of the command's flags, for the workspace found already.
    make_request: Callable[[Sequence[str], Workspace], BuildRequest]
    _workspace: Workspace | None = None
    _gc_lock: FileLock | None = None

    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = find_workspace(self.cwd, self.args.workspace)
        return self._workspace

    def workspace_root(self) -> str:
        return self.workspace().root

    def cache_dir(self) -> str:
        return os.path.abspath(self.args.cache_dir) if self.args.cache_dir else default_cache_dir()

    def oci_blobs(self) -> BlobStore:
        # Held until the command ends (the process exits): a pull stores blobs before the image
        # that names them, and a prune in between must not take them (pbuild.engine.cachegc).
        if self._gc_lock is None:
            from pbuild.engine.gclock import lock_shared

            self._gc_lock = lock_shared(self.cache_dir(), lambda m: print(m, file=sys.stderr))
        from pbuild.engine.store import LocalStore, OciBlobs

        return OciBlobs(LocalStore(self.cache_dir()))

    def build_one(self, target: str) -> BuiltTarget:
        from pbuild.engine.build import build

        workspace = self.workspace()
        _, analyzed, _ = build(self.make_request([target], workspace), workspace=workspace)
        if len(analyzed.labels) != 1:
            raise PbuildError(f"{target} names {len(analyzed.labels)} targets; name exactly one",
                              hint="use a label, not a pattern")
        label = analyzed.labels[0]
        return BuiltTarget(label, analyzed.rule_names[label], analyzed.targets[label], workspace.root)

    def out(self, text: str) -> None:
        print(text)
