"""``pbuild run``, from the command line to the started program.

One module owns the whole command: the run request (the target and the user's arguments, split
from pbuild's flags), finding the workspace (once), the up-to-date fast path, the build of what
running needs, the typed :data:`RunPlan`, and starting it (exec a program, on the host or on its
toolchain's root, or hand an image to the launcher).

Import-light on purpose: a ``pbuild run`` with nothing to rebuild goes from the stamp check
straight to the exec, without loading the build machinery.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbuild.engine.errors import PbuildError

if TYPE_CHECKING:
    import argparse

    from pbuild.engine.build import Analyzed, BuildRequest
    from pbuild.engine.scheduler import Executor
    from pbuild.engine.uptodate import Event as StampEvent
    from pbuild.engine.workspace import Workspace
    from pbuild.lib.cmdline import OptionTable
    from pbuild.tools.launcher.config import RunOptions

USAGE = "pbuild run [OPTIONS] TARGET|IMAGE [COMMAND] [ARG...]"
# Docker's code for an error of `docker run` itself (bad option, no such image): a container's
# own exit code passes through `pbuild run`, so pbuild's must not look like one (docs/launcher.md).
EXIT_RUN = 125

# `pbuild run oci:PATH` and `docker-archive:PATH` run an image from disk: the launcher's job alone.
DISK_IMAGE_PREFIXES = ("oci:", "docker-archive:")


class RunError(PbuildError):
    """An error of ``pbuild run``'s own command line or image lookup (exit 125, as Docker)."""

    exit_code = EXIT_RUN


def target_kind(target: str) -> str:
    """What ``pbuild run``'s operand names: "label" (built), "disk" (``oci:``/``docker-archive:``,
    the launcher's), or "stored" (an image in the image store, by name or ID)."""
    if target.startswith(("//", ":")):
        return "label"
    if target.startswith(DISK_IMAGE_PREFIXES):
        return "disk"
    return "stored"


@dataclass(frozen=True)
class ContainerRequest:
    """The container options of one ``pbuild run`` (for an image)."""

    parsed: argparse.Namespace  # as parsed; the launcher's RunOptions are made when the image is known
    given: tuple[str, ...]  # the container options on the command line (refused for a program)
    table: OptionTable  # every option of `pbuild run`: one right after an image is refused

    def run_options(self, image: str, command: Sequence[str]) -> RunOptions:
        """The launcher's options for running ``image`` with ``command``."""
        from pbuild.tools.launcher.options import run_options

        return run_options(self.parsed, image, command)


@dataclass(frozen=True)
class RunRequest:
    """One ``pbuild run``: what to run, with which arguments, from where, and how to build it."""

    target: str
    args: tuple[str, ...]  # every word after the target, verbatim
    cwd: str
    workspace_dir: str | None
    cache_dir: str | None
    # The umask the user started pbuild with: pbuild builds under 022, the program gets this back.
    user_umask: int
    # The full build request (remote settings and all), made only when a build is needed.
    make_build_request: Callable[[Workspace], BuildRequest]
    container: ContainerRequest
    # The build options on the command line (refused for an image that is not built).
    build_options: tuple[str, ...] = ()
    # --build-event-json: a run with nothing to rebuild replays the recorded build's events there.
    event_file: str | None = None


# -- the run plan: what a built target starts as -------------------------------------------------

_PLAN_FORMAT = "run-plan/1"  # in the stamp: a plan of another format is not read, the target rebuilt


@dataclass(frozen=True)
class ImagePlan:
    """Run the OCI layout at ``layout`` with the image launcher."""

    layout: str

    def to_data(self) -> tuple[Any, ...]:
        return (_PLAN_FORMAT, "image", self.layout)


@dataclass(frozen=True)
class ToolchainRoot:
    """The unpacked tree of a program's toolchain, which it starts on as ``/``."""

    tree: str
    label: str


@dataclass(frozen=True)
class ProgramPlan:
    """Exec ``argv`` plus the user's arguments with ``env`` added, on the host's root or on a
    toolchain's tree (the workspace, the working directory and pbuild-out seen at their own paths)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    keep_dashdash: bool
    root: str  # the workspace root
    toolchain: ToolchainRoot | None = None

    def to_data(self) -> tuple[Any, ...]:
        tc = (self.toolchain.tree, self.toolchain.label) if self.toolchain else None
        return (_PLAN_FORMAT, "program", list(self.argv), dict(self.env), self.keep_dashdash, self.root, tc)


RunPlan = ImagePlan | ProgramPlan


def plan_from_data(data: Any) -> RunPlan | None:
    """The plan a stamp stored (:meth:`to_data`), or None if it holds none of this format."""
    if not isinstance(data, tuple) or not data or data[0] != _PLAN_FORMAT:
        return None
    if data[1] == "image":
        return ImagePlan(data[2])
    _, _, argv, env, keep_dashdash, root, tc = data
    return ProgramPlan(tuple(argv), tuple(sorted(env.items())), keep_dashdash, root,
                       ToolchainRoot(*tc) if tc is not None else None)


# -- the command -----------------------------------------------------------------------------------

def run_command(request: RunRequest) -> int:
    """``pbuild run``: a label with nothing to rebuild starts its recorded run plan at once; else
    what running needs is built, the plan recorded in a stamp, and started. An image from disk or
    from the image store goes to the launcher as it is."""
    kind = target_kind(request.target)
    if kind != "label":
        return _run_unbuilt_image(request, kind)
    from pbuild.engine import uptodate
    from pbuild.engine.workspace import find_workspace

    workspace = find_workspace(request.cwd, request.workspace_dir)
    stamp = uptodate.command_stamp(workspace, request.cwd, request.cache_dir, [request.target], ["run"])
    found = uptodate.check_stamp_with_extra(stamp)
    plan = plan_from_data(found[1]) if found is not None else None
    if plan is None:
        uptodate.discard_stamp(stamp)
        plan = build_for_run(request.make_build_request(workspace), workspace, request.target, stamp)
    elif request.event_file is not None:
        _replay_events(found[0] if found is not None else [], request.event_file)
    return start(plan, request)


def _replay_events(events: Sequence[StampEvent], event_file: str) -> None:
    """Write what the up-to-date run built, every action cached, as `pbuild build` replays a no-op
    (so a bench or CI can check from the events that nothing ran)."""
    from pbuild.engine.events import Reporter

    reporter = Reporter(event_file=event_file, quiet=True)
    for label, mnemonic, key in events:
        reporter.action_finished(ident=0, label=label, mnemonic=mnemonic, key=key, status="cached", duration_ms=0.0)
    reporter.finish()


def _run_unbuilt_image(request: RunRequest, kind: str) -> int:
    """``oci:PATH``, ``docker-archive:PATH`` or a stored image's name or ID: nothing to build."""
    refused = [o for o in request.build_options if kind == "disk" or o != "--cache-dir"]
    if refused:
        raise RunError(f"{', '.join(refused)}: build options apply to a target, and {request.target} is an image",
                       hint=f"leave them out ({USAGE})")
    if kind == "disk":
        return _start_image(request.target, request)
    from pbuild.engine.store import LocalStore, OciBlobs
    from pbuild.engine.workspace import default_cache_dir
    from pbuild.lib.errors import UserError
    from pbuild.lib.oci.imagestore import ImageNotFound, ImageStore

    cache_dir = os.path.abspath(request.cache_dir) if request.cache_dir else default_cache_dir()
    try:
        image = ImageStore.at(cache_dir, OciBlobs(LocalStore(cache_dir))).resolve(request.target)
    except ImageNotFound as exc:
        hint = exc.hint or ""
        if ":" in request.target and "/" not in request.target:  # `app:image` for //app:image?
            hint += f"; a target to build is written as a label: //{request.target}"
        raise RunError(exc.message, hint=hint) from None
    except UserError as exc:  # an ambiguous ID prefix, a damaged store: run's own error too
        raise RunError(exc.message, hint=exc.hint) from None
    return _start_image(f"oci:{image.layout}", request)


def build_for_run(build_request: BuildRequest, workspace: Workspace, target: str, stamp: str | None = None) -> RunPlan:
    """Build what running ``target`` needs (not all its outputs), and the plan that starts it;
    with ``stamp``, record the plan there for the next identical run."""
    from pbuild.engine import uptodate
    from pbuild.engine.api import RunInfo
    from pbuild.engine.build import build
    from pbuild.engine.errors import PbuildError

    if not build_request.quiet and not sys.stderr.isatty():
        build_request = dataclasses.replace(build_request, quiet=True)
    trees: list[str] = []

    def unpack_toolchain(analyzed: Analyzed, executor: Executor) -> None:
        # A program on a toolchain starts on its tree: made now, and recorded in the stamp, so a
        # no-op run never starts on a tree that was removed since.
        for providers in analyzed.targets.values():
            run_info = providers.get(RunInfo)
            if run_info is not None and run_info.toolchain is not None:
                trees.append(executor.toolchain_tree(run_info.toolchain))
                executor.recorder.directory(trees[-1])

    session, analyzed, result = build(build_request, only_files=_run_files, after=unpack_toolchain,
                                      workspace=workspace)
    if len(analyzed.labels) != 1:
        raise PbuildError(f"{target} names {len(analyzed.labels)} targets; name exactly one",
                          hint="use a label, not a pattern")
    label = analyzed.labels[0]
    plan = plan_for(workspace.root, label, analyzed.rule_names[label], analyzed.targets[label],
                    trees[-1] if trees else None)
    if stamp is not None:
        outputs = [os.path.join(workspace.root, o.path) for res in result.results for o in res.outputs]
        uptodate.write_stamp(stamp, session.loader.recorder, outputs, result.events, extra=plan.to_data())
    return plan


def _image_info_type() -> Any:
    try:
        from pbuild.rules.oci.providers import ImageInfo
    except ImportError:
        return None
    return ImageInfo


def _run_files(analyzed: Analyzed) -> list[Any]:
    """What running needs: RunInfo's files and the runfiles; an image's outputs; else all files."""
    from pbuild.engine.api import DefaultInfo, File, RunInfo

    files: list[File] = []
    image_type = _image_info_type()
    for target in analyzed.targets.values():
        run_info = target.get(RunInfo)
        if run_info is not None and (image_type is None or image_type not in target):
            info = target.get(DefaultInfo)
            files.extend(a for a in run_info.argv if isinstance(a, File))
            files.extend(info.runfiles if info else ())
            files.extend(run_info.toolchain.files if run_info.toolchain else ())
        else:
            files.extend(target.files)
    return files


def plan_for(root: str, label: Any, rule_name: str, providers: Any, tree: str | None = None) -> RunPlan:
    """What ``pbuild run`` starts for a built target; ``tree`` is the unpacked root of its
    toolchain, if it has one."""
    from pbuild.engine.api import File, RunInfo
    from pbuild.engine.errors import PbuildError

    image_type = _image_info_type()
    if image_type is not None and image_type in providers:
        return ImagePlan(os.path.join(root, providers[image_type].layout.path))
    run_info = providers.get(RunInfo)
    if run_info is None:
        raise PbuildError(f"{label} (a {rule_name}) cannot be run",
                          label=label, hint="pbuild run takes a py_binary, an image, or oci:PATH")
    argv = tuple(os.path.join(root, a.path) if isinstance(a, File) else a for a in run_info.argv)
    toolchain = None
    if run_info.toolchain is not None:
        assert tree is not None
        toolchain = ToolchainRoot(tree, str(run_info.toolchain.label))
    return ProgramPlan(argv, tuple(sorted(run_info.env.items())), run_info.keep_dashdash, root, toolchain)


# -- starting the plan -----------------------------------------------------------------------------

def start(plan: RunPlan, request: RunRequest) -> int:
    """Start the plan with the request's arguments; returns only for images (the launcher's code)."""
    if isinstance(plan, ImagePlan):
        return _start_image(f"oci:{plan.layout}", request)
    if request.container.given:
        raise RunError(f"{', '.join(request.container.given)}: container options apply to an image, "
                       f"and {request.target} is a program",
                       hint=f"leave them out; the program's own arguments go after the target: "
                            f"`pbuild run {request.target} ARG...`")
    extra, user_umask = request.args, request.user_umask
    if plan.toolchain is not None:
        return _exec_on_toolchain(plan, plan.toolchain, extra, user_umask=user_umask)
    argv = [*plan.argv, *_program_args(plan, extra)]
    env = dict(os.environ)
    env.update(plan.env)
    env["BUILD_WORKSPACE_DIRECTORY"] = plan.root
    env["BUILD_WORKING_DIRECTORY"] = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    os.umask(user_umask)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        from pbuild.engine.errors import BuildFailed

        raise BuildFailed(f"cannot start {argv[0]}: {exc.strerror}",
                          hint="check the target's interpreter ([python] interpreter in WORKSPACE.toml)") from None
    return 0  # not reached


def _start_image(image: str, request: RunRequest) -> int:
    """Hand ``image`` (``oci:PATH``, ``docker-archive:PATH``) to the launcher with the request's
    container options and command (an option of `pbuild run` first in it is refused)."""
    from pbuild.tools.launcher.cli import run_image
    from pbuild.tools.launcher.options import image_command

    command = image_command(request.container.table, request.args, "image", USAGE)
    code = run_image(request.container.run_options(image, command))
    global container_ended
    container_ended = True
    return code


# Set once a container ran to its end in this process (or failed to start): the command has
# nothing left to do but return its code, so the wrapper may skip the interpreter's teardown
# (pbuild.engine.cli.exit_process).
container_ended = False


def _program_args(plan: ProgramPlan, extra: Sequence[str]) -> list[str]:
    args = list(extra)
    if args[:1] == ["--"] and not plan.keep_dashdash:
        args = args[1:]
    return args


# What a program on a toolchain finds on its PATH (the toolchain's, never the host's).
_TOOLCHAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _hold_tree(tree: str, label: str) -> None:
    """Hold the tree's lock shared for the program's life: `pbuild system prune` removes a tree
    only when it can take that lock exclusive. The descriptor is left open across the exec on
    purpose (the program, or the fork backend's waiting parent, keeps it, and the kernel drops it
    when they end)."""
    from pbuild.engine.errors import BuildFailed
    from pbuild.lib import filelock

    try:
        filelock.acquire(tree + ".lock", exclusive=False).keep_across_exec()
    except OSError as exc:
        raise BuildFailed(f"cannot lock toolchain {label}'s tree {tree}: {exc.strerror}",
                          hint="check that the cache dir is yours and writable") from None
    if not os.path.isdir(tree):  # a prune removed it while we waited for the lock
        raise BuildFailed(f"toolchain {label}'s tree was removed by `pbuild system prune` meanwhile",
                          hint="run the command again: the tree is unpacked anew")


def _exec_on_toolchain(plan: ProgramPlan, toolchain: ToolchainRoot, extra: Sequence[str], *, user_umask: int) -> int:
    """Start the program of a toolchain plan in its root (``pbuild.tools.sandbox.exec_on_root``)."""
    from pbuild.engine.errors import BuildFailed
    from pbuild.tools.sandbox import SandboxRequestError, exec_on_root

    program, tree, label = plan.argv[0], toolchain.tree, toolchain.label
    if program.startswith("/") and not os.path.lexists(tree + program):
        raise BuildFailed(f"cannot start {program}: toolchain {label} has no such program",
                          hint=f"add the Debian package that provides it to the packages of {label}, "
                               "then run `./pbuild lock --debian`")
    _hold_tree(tree, label)
    cwd = os.getcwd()
    env = dict(os.environ)
    env.update(plan.env)
    env["PATH"] = _TOOLCHAIN_PATH
    env["BUILD_WORKSPACE_DIRECTORY"] = plan.root
    env["BUILD_WORKING_DIRECTORY"] = cwd
    out = os.path.join(plan.root, "pbuild-out")
    # pbuild-out may be a link to scratch space: its target is bound too.
    binds = sorted({plan.root, cwd, out, os.path.realpath(out)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.umask(user_umask)
    try:
        exec_on_root(tree, [*plan.argv, *_program_args(plan, extra)], env, binds=binds, cwd=cwd)
    except SandboxRequestError as exc:
        raise BuildFailed(f"cannot start {program} on toolchain {label}: {exc}",
                          hint="run pbuild from a folder of the workspace, or check the toolchain target") from None
    return 0  # not reached
