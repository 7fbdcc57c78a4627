"""The container's filesystem as a list of setup operations (``nsops``), built before any fork.

Order: private propagation; the image root (overlayfs over the layer store, stacked in two
steps for more than 500 layers, or a bind of the flattened copy); ``/proc`` with runc's masked and read-only paths; ``/dev`` (a tmpfs with the
safe device nodes bound in, a private devpts, shm); ``/sys`` read-only; the generated
``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``; volumes; the working directory;
read-only root when asked; then ``pivot_root`` detaches the host. Paths inside the image are
resolved with its symlinks kept inside the root (``nsops.resolve_in_root``), so an image whose
``/dev`` or ``/etc/hosts`` is a link to a host path cannot make us mount over the host.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from pbuild.tools.launcher.config import ContainerSpec
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.sandbox import linux, nsops

# Facts from runc's default spec: what a container must not read or write in /proc and /sys.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class RootFs(NamedTuple):
    """Where the image's files come from: overlay layers (bottom first) or one flat directory."""

    container_dir: str
    layers: tuple[str, ...] = ()
    flat: str | None = None

    @property
    def mountpoint(self) -> str:
        return os.path.join(self.container_dir, "rootfs")


OVERLAY_MAX_LOWER = 500
"""Lower layers one overlayfs mount takes (the kernel's OVL_MAX_STACK); more fail with EINVAL."""
OVERLAY_MAX_LAYERS = 2 * OVERLAY_MAX_LOWER - 1
"""Layers we can stack: an overlay of the bottom ones as the lowest layer of a second overlay.
Overlays nest only once more (the kernel's FILESYSTEM_MAX_STACK_DEPTH is 2), and only the
*bottom* group may be pre-stacked: a group higher up would apply its bottom layer's whiteouts
and opaque directories to itself only, not to the layers below it."""


def overlay_ops(rootfs: RootFs) -> list[nsops.Op]:
    """Mount the layers as the container's root: one overlay, or for more than
    :data:`OVERLAY_MAX_LOWER` layers, the bottom ones first as a read-only overlay at ``lower``
    that becomes the lowest layer of the root overlay."""
    count = len(rootfs.layers)
    if count > OVERLAY_MAX_LAYERS:
        raise LauncherError(
            f"the image has {count} layers; overlayfs stacks at most {OVERLAY_MAX_LAYERS} "
            f"({OVERLAY_MAX_LOWER} per mount, nested once)",
            hint="build the image with fewer layers (merge small ones), or run it from a flattened "
            "copy with PBUILD_LAUNCHER_NO_OVERLAY=1 (slower to start)",
        )
    # Relative lowerdirs (short symlinks in the container dir, see run.prepare_container_dir)
    # keep the option string under the kernel's one-page limit even for 500 layers.
    lowers = [f"l/{i}" for i in range(count)]
    ops: list[nsops.Op] = [nsops.Chdir(rootfs.container_dir)]
    if count > OVERLAY_MAX_LOWER:
        bottom = count - (OVERLAY_MAX_LOWER - 1)  # 2..500 layers, so the top takes the rest
        stacked = ":".join(reversed(lowers[:bottom]))
        ops.append(
            nsops.Mount("overlay", "lower", "overlay", linux.MS_RDONLY, f"lowerdir={stacked},userxattr")
        )
        lowers = ["lower", *lowers[bottom:]]
    lower = ":".join(reversed(lowers))
    ops += [
        nsops.Mount(
            "overlay",
            rootfs.mountpoint,
            "overlay",
            0,
            f"lowerdir={lower},upperdir=upper,workdir=work,userxattr",
        ),
        nsops.Chdir("/"),
    ]
    return ops


def generated_files(spec: ContainerSpec) -> dict[str, bytes]:
    """The contents of the container's /etc/hosts, /etc/hostname and /etc/resolv.conf."""
    name = spec.hostname
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    resolv = b"# no network (--network none)\n"
    join = spec.options.join
    if join is not None:  # a stack's network: its names are in /etc/hosts, no DNS beyond it
        from pbuild.tools.launcher.join import hosts_lines

        hosts += hosts_lines(join, name)
        resolv = b"nameserver 10.0.2.3\n" if join.outbound else b"# the stack's names are in /etc/hosts\n"
        return {"hosts": hosts.encode(), "hostname": f"{name}\n".encode(), "resolv.conf": resolv}
    hosts += f"127.0.1.1\t{name}\n"
    if spec.options.network != "none":
        try:
            with open("/etc/resolv.conf", "rb") as f:
                resolv = f.read()
        except OSError:
            resolv = b""
        if spec.options.network == "slirp4netns":  # slirp4netns forwards DNS from this address
            resolv = b"nameserver 10.0.2.3\n"
    return {"hosts": hosts.encode(), "hostname": f"{name}\n".encode(), "resolv.conf": resolv}


def plan_container(spec: ContainerSpec, rootfs: RootFs) -> tuple[nsops.Op, ...]:
    """Every mount the container needs, ending with the pivot into its root."""
    root = rootfs.mountpoint
    cdir = rootfs.container_dir
    ops: list[nsops.Op] = [nsops.Mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)]
    if rootfs.flat is None:
        ops += overlay_ops(rootfs)
    else:
        ops.append(nsops.Mount(rootfs.flat, root, None, linux.MS_BIND | linux.MS_REC))
    nosuid_nodev_noexec = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    ops += [
        nsops.Mount("proc", "/proc", "proc", nosuid_nodev_noexec, root=root, create="dir"),
        nsops.Mount(
            "tmpfs", "/dev", "tmpfs", linux.MS_NOSUID, "mode=0755,size=65536k", root=root, create="dir"
        ),
    ]
    for dev in DEVICES:
        ops.append(nsops.Mount(f"/dev/{dev}", f"/dev/{dev}", None, linux.MS_BIND, root=root, create="file"))
    ops += [
        nsops.Mount(
            "devpts",
            "/dev/pts",
            "devpts",
            linux.MS_NOSUID | linux.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
            root=root,
            create="dir",
        ),
        nsops.Symlink("pts/ptmx", "/dev/ptmx", root),
        nsops.Mount(
            "shm", "/dev/shm", "tmpfs", nosuid_nodev_noexec, "mode=1777,size=65536k", root=root, create="dir"
        ),
        nsops.Symlink("/proc/self/fd", "/dev/fd", root),
        nsops.Symlink("/proc/self/fd/0", "/dev/stdin", root),
        nsops.Symlink("/proc/self/fd/1", "/dev/stdout", root),
        nsops.Symlink("/proc/self/fd/2", "/dev/stderr", root),
    ]
    if spec.options.network == "host":
        # sysfs can only be mounted fresh by the owner of a network namespace: bind the host's.
        ops.append(nsops.Mount("/sys", "/sys", None, linux.MS_BIND | linux.MS_REC, root=root, create="dir"))
        ops.append(nsops.SetAttr("/sys", linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID, root=root))
    else:
        ops.append(
            nsops.Mount(
                "sysfs", "/sys", "sysfs", nosuid_nodev_noexec | linux.MS_RDONLY, root=root, create="dir"
            )
        )
    for path in MASKED_PATHS:
        ops.append(nsops.Mask(root, path))
    for path in READONLY_PATHS:
        ops.append(nsops.ReadOnly(root, path))
    for name in generated_files(spec):
        ops.append(
            nsops.Mount(f"{cdir}/{name}", f"/etc/{name}", None, linux.MS_BIND, root=root, create="file")
        )
    if spec.options.read_only:
        for path in ("/tmp", "/run"):
            ops.append(
                nsops.Mount(
                    "tmpfs",
                    path,
                    "tmpfs",
                    linux.MS_NOSUID | linux.MS_NODEV,
                    "mode=1777",
                    root=root,
                    create="dir",
                )
            )
    for volume in spec.options.volumes:
        kind = "dir" if os.path.isdir(volume.host) else "file"
        ops.append(
            nsops.Mount(
                volume.host, volume.container, None, linux.MS_BIND | linux.MS_REC, root=root, create=kind
            )
        )
        if volume.read_only:
            ops.append(nsops.SetAttr(volume.container, linux.MOUNT_ATTR_RDONLY, root=root))
    ops.append(nsops.MakeDir(spec.workdir, root=root))
    if spec.options.read_only:
        ops.append(nsops.SetAttr(root, linux.MOUNT_ATTR_RDONLY, recursive=False))
    ops.append(nsops.SetHostname(spec.hostname))
    if spec.options.network != "host":
        ops.append(nsops.LoopbackUp())
    ops.append(nsops.PivotRoot(root))
    return tuple(ops)
