"""``pbuild run``: image -> layers in the store -> container directory -> namespaces -> exec.

Two entry points over one preparation (:func:`_prepare`): :func:`run`, the CLI's (the caller's
terminal, signals forwarded, waits unless detached), and :func:`start_container`, a program's
(the stack supervisor's): it supplies the container's stdio fds and gets the started container
back, or a LauncherError.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from pbuild.lib import atomicio
from pbuild.lib.filelock import FileLock
from pbuild.tools.launcher import cgroups, identity, process, seccomp
from pbuild.tools.launcher.config import ContainerSpec, RunOptions, resolve_spec
from pbuild.tools.launcher.errors import EXIT_LAUNCHER, LauncherError
from pbuild.tools.launcher.image import load_image
from pbuild.tools.launcher.layerstore import ensure_layers, lock_store, store_root
from pbuild.tools.launcher.mounts import RootFs, generated_files, plan_container
from pbuild.tools.launcher.state import ContainerState, ContainerStore, process_start_time
from pbuild.tools.sandbox import linux

if TYPE_CHECKING:
    from pbuild.tools.launcher import forward
    from pbuild.tools.launcher import join as join_mod

_NAMESPACES = (
    linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
)


def notice(message: str) -> None:
    sys.stderr.write(f"pbuild: {message}\n")


def overlay_supported(layers_root: str) -> bool:
    """Can this user mount overlayfs (with userxattr) in a user namespace? Probed once per
    kernel and user, the answer kept beside the layer store; the first "no" tells the user.
    ``PBUILD_LAUNCHER_NO_OVERLAY=1`` forces the flattened copy (for tests and debugging)."""
    marker = os.path.join(layers_root, f"overlay-probe-{os.geteuid()}")
    release = os.uname().release
    verdict = None
    with contextlib.suppress(OSError), open(marker) as f:
        said, _, probed_release = f.read().strip().partition(" ")
        if probed_release == release:
            verdict = said
    if verdict is None:
        verdict = "ok" if _probe_overlay(layers_root) else "no"
        with contextlib.suppress(OSError):  # not remembered: probed again next time
            atomicio.write_text(marker, f"{verdict} {release}\n")
    if os.environ.get("PBUILD_LAUNCHER_NO_OVERLAY"):
        verdict = "no"
    if verdict == "no":
        told = os.path.join(layers_root, f"flattened-notice-{os.geteuid()}")
        try:
            os.close(os.open(told, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            notice(
                "overlayfs cannot be used here; each container gets a flattened copy of the image "
                "instead (slower to start, more disk). This notice is shown once."
            )
        except OSError:
            pass
    return verdict == "ok"


def _probe_overlay(layers_root: str) -> bool:
    from pbuild.tools.launcher.dirs import scratch_dir

    with scratch_dir(os.path.join(layers_root, "tmp"), "probe") as base:
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(base, sub))
        uid, gid = os.geteuid(), os.getegid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
                linux.write_id_maps("self", f"0 {uid} 1\n", f"0 {gid} 1\n")
                os.chdir(base)
                linux.mount(
                    "overlay", "merged", "overlay", 0, "lowerdir=lower,upperdir=upper,workdir=work,userxattr"
                )
                code = 0
            except BaseException:  # noqa: BLE001 - a probe: any failure means no
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def resource_limits(options: RunOptions) -> cgroups.Limits:
    if options.pids_limit is not None and options.pids_limit < 1:
        raise LauncherError(f"--pids-limit {options.pids_limit} must be at least 1")
    if options.cpus is not None and options.cpus <= 0:
        raise LauncherError(f"--cpus {options.cpus} must be positive")
    memory = cgroups.parse_memory(options.memory) if options.memory is not None else None
    return cgroups.Limits(memory, options.pids_limit, options.cpus)


def prepare_container_dir(cdir: str, layer_dirs: list[str], spec: ContainerSpec) -> None:
    """The overlay upper and work dirs, the rootfs mount point (and ``lower``, where the bottom
    layers are stacked first when there are too many for one overlay), short links to the
    layers (``l/0`` is the bottom layer) and the generated /etc files."""
    for sub in ("upper", "work", "rootfs", "lower", "l"):
        os.makedirs(os.path.join(cdir, sub), exist_ok=True)
    for i, layer in enumerate(layer_dirs):
        os.symlink(layer, os.path.join(cdir, "l", str(i)))
    for name, content in generated_files(spec).items():
        with open(os.path.join(cdir, name), "wb") as f:
            f.write(content)
    # The user namespace's root (the caller, or the host's root) must be able to reach them.
    os.chmod(cdir, 0o755)


@dataclass(frozen=True)
class StartedContainer:
    """A container that :func:`start_container` started: its state (running, with the init's
    pid and start time) and the pid of its monitor, a child of the caller whose exit status is
    the container's exit code (reap it with ``waitpid``)."""

    state: ContainerState
    monitor_pid: int


class _Prepared(NamedTuple):
    launch: process.Launch
    store: ContainerStore
    idmap: identity.IdMap
    layer_lock: FileLock

    def release(self) -> None:
        """The launcher's copies of the holder's namespaces and the bound ports, and the layer
        store's lock (after the fork: the container is running, its record names its layers;
        the monitor closed its copy of the lock's descriptor with every other one it does not
        keep)."""
        self.layer_lock.release()
        _release(self.launch.holder, self.launch.listeners)


def _release(holder: join_mod.Holder | None, listeners: tuple[forward.Listener, ...]) -> None:
    if holder is not None:
        holder.close()
    for listener in listeners:
        listener.sock.close()


def _prepare(options: RunOptions) -> _Prepared:
    """Everything before the fork: limits, filter, image layers, the container's record and
    directory, the mount plan; with ``options.join`` the holder's namespaces and the published
    ports bound on the host. Nothing is left behind when it raises."""
    limits = resource_limits(options)
    capabilities = identity.capability_mask(options.cap_add, options.cap_drop)
    policy = seccomp.choose_policy(options.security_opt)
    holder = None
    listeners: tuple[forward.Listener, ...] = ()
    if options.join is not None:
        from pbuild.tools.launcher import forward as forwarding  # the relay: only when joining a stack
        from pbuild.tools.launcher import join

        if options.network != "none":
            raise LauncherError(
                f"--network {options.network} and a stack's network exclude each other",
                hint="a stack's service gets outbound access with `outbound = true`",
            )
        join.validate(options.join)
        listeners = tuple(forwarding.bind(options.publish))
    try:
        if options.join is not None:
            holder = join.open_holder(options.join)
        return _prepare_container(options, limits, capabilities, policy, holder, listeners)
    except BaseException:
        _release(holder, listeners)
        raise


def _prepare_container(
    options: RunOptions,
    limits: cgroups.Limits,
    capabilities: int,
    policy: seccomp.Policy,
    holder: join_mod.Holder | None,
    listeners: tuple[forward.Listener, ...],
) -> _Prepared:
    layers_root = store_root()
    # Held from before the image is read until the container runs (_Prepared.release): `pbuild
    # system prune` removes layers (and images) only under this lock taken exclusive.
    layer_lock = lock_store(layers_root, exclusive=False, on_wait=lambda: notice(
        "waiting for `pbuild system prune` to finish with the layer store"))
    try:
        return _prepare_locked(options, limits, capabilities, policy, holder, listeners, layers_root, layer_lock)
    except BaseException:
        layer_lock.release()
        raise


def _prepare_locked(
    options: RunOptions,
    limits: cgroups.Limits,
    capabilities: int,
    policy: seccomp.Policy,
    holder: join_mod.Holder | None,
    listeners: tuple[forward.Listener, ...],
    layers_root: str,
    layer_lock: FileLock,
) -> _Prepared:
    image = load_image(options.image, options.platform)
    layer_dirs = ensure_layers(image, layers_root, notify=notice)
    store = ContainerStore()
    program = seccomp.build_program(
        policy, identity.capability_names(capabilities), os.path.join(store.root, "seccomp")
    )
    container_id = os.urandom(32).hex()
    spec = resolve_spec(image.run_config, options, container_id, image.digest)
    idmap = identity.choose_id_map()
    single_map = holder.single_map if holder is not None else idmap.single
    extra: dict[str, object] = {
        "user": spec.user,
        "single_map": single_map,
        "image_digest": image.digest,
        # What `pbuild system prune` keeps while this container exists (layerstore's lock).
        "layers": [layer.diff_id for layer in image.layers],
        "capabilities": capabilities,
        "seccomp": policy.record(),
    }
    if image.emulated:  # `exec` checks the emulation again (a handler may be gone by then)
        extra["emulated"] = image.emulated
    if options.labels:
        extra["labels"] = dict(options.labels)
    if options.publish:
        extra["ports"] = [
            f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}" for p in options.publish
        ]
    if options.join is not None:
        extra["network"] = {"address": options.join.address, "outbound": options.join.outbound}
    cgroup_dirs = cgroups.create(limits, container_id[:12])
    extra["cgroups"] = list(cgroup_dirs)
    state = store.create(
        options.name,
        options.image,
        spec.argv,
        container_id=container_id,
        detached=options.detach,
        auto_remove=options.remove,
        env=spec.env,
        workdir=spec.workdir,
        extra=extra,
    )
    cdir = store.container_dir(container_id)
    try:
        prepare_container_dir(cdir, layer_dirs, spec)
        if overlay_supported(layers_root):
            rootfs = RootFs(cdir, tuple(layer_dirs))
        else:
            # Only without overlayfs: flatten's layer reader (tarfile and all) stays off the
            # common path's imports.
            from pbuild.tools.launcher.flatten import flatten

            flat = os.path.join(cdir, "flat")
            os.mkdir(flat)
            flatten(layer_dirs, flat)
            rootfs = RootFs(cdir, flat=flat)
        ops = plan_container(spec, rootfs)
    except BaseException:
        from pbuild.tools.launcher.lifecycle import remove_container

        remove_container(store, state)
        raise
    namespaces = _NAMESPACES | (0 if options.network == "host" else linux.CLONE_NEWNET)
    launch = process.Launch(
        ops=ops,
        setup=process.ProcessSetup(
            argv=spec.argv,
            env=spec.env,
            workdir=spec.workdir,
            user=spec.user,
            tty=options.tty,
            single_map=single_map,
            capabilities=capabilities,
            seccomp=program,
        ),
        namespaces=namespaces,
        # An emulated command is never PID 1: qemu dies of a guest's fatal signal by sending it to
        # itself, which the kernel ignores for a namespace's PID 1 (it would hang); the init is PID 1.
        init=options.init or image.emulated is not None,
        detached=options.detach,
        state=state,
        store_root=store.root,
        cgroups=cgroup_dirs,
        slirp=options.network == "slirp4netns" or (options.join is not None and options.join.outbound),
        publish=options.publish,
        join=options.join,
        holder=holder,
        listeners=listeners,
    )
    return _Prepared(launch, store, idmap, layer_lock)


def start_container(options: RunOptions, stdio: process.Stdio) -> StartedContainer:
    """Start a container with the caller's ``stdio`` fds (the caller keeps and closes them; no
    terminal: ``options.tty`` is refused) and return once its command was exec'd. With
    ``options.detach`` the container outlives the caller; otherwise it is killed when the caller
    dies. A failed start raises LauncherError (the message says why; ``exit_code`` is 125, 126
    or 127 as for ``run``) and leaves no container behind."""
    if options.tty:
        raise LauncherError("start_container takes no terminal (tty)")
    prepared = _prepare(options)
    state = prepared.launch.state
    try:
        monitor, init_pid, error = process.start(prepared.launch, stdio, prepared.idmap)
    except BaseException:
        from pbuild.tools.launcher.lifecycle import remove_container

        remove_container(prepared.store, state)
        raise
    finally:
        prepared.release()
    if error is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(monitor, 0)
        from pbuild.tools.launcher.lifecycle import remove_container

        with contextlib.suppress(OSError):
            remove_container(prepared.store, state)
        raise LauncherError(error[1], exit_code=error[0] or EXIT_LAUNCHER)
    now = prepared.store.load(state.id)
    if now is None or now.pid != init_pid:  # removed already (--rm and a very short command)
        now = state._replace(status="running", pid=init_pid, pid_start=process_start_time(init_pid) or 0)
    return StartedContainer(now, monitor)


def run(options: RunOptions, started: float) -> int:
    """Run ``options.image``; return the container's exit code (125/126/127 for failures)."""
    prepared = _prepare(options)
    launch, store, state = prepared.launch, prepared.store, prepared.launch.state
    cdir = store.container_dir(state.id)
    from pbuild.tools.launcher import terminal

    try:
        stdio, restore = terminal.open_stdio(
            options.interactive, options.tty, os.path.join(cdir, "log") if options.detach else None
        )
    except BaseException:
        prepared.release()
        raise
    timing_fd = -1
    timing_path = os.environ.get("PBUILD_LAUNCHER_TIMING")
    if timing_path:  # for bench/bench_launcher.py: when did we exec the entrypoint?
        timing_fd = os.open(timing_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.write(timing_fd, f"main {started}\n".encode())
        process.mark(timing_fd, "fork")
    with process.SignalForwarder() as forwarder:
        try:
            monitor, init_pid, error = process.start(launch, stdio, prepared.idmap, timing_fd)
        finally:
            prepared.release()
            if timing_fd >= 0:
                os.close(timing_fd)
        forwarder.forward_to(init_pid)
        if options.detach:
            restore()
            if error is not None:
                process.print_error(error[1])
                return error[0]
            print(state.id)
            return 0
        try:
            relay = (lambda: terminal.proxy(stdio, options.interactive)) if options.tty else None
            code = process.wait_monitor(monitor, on_idle=relay)
        finally:
            restore()
    if error is not None:
        process.print_error(error[1])
        if options.remove:
            from pbuild.tools.launcher.lifecycle import remove_container

            with contextlib.suppress(OSError):
                remove_container(store, state)
        return error[0] if error[0] else EXIT_LAUNCHER
    return code
