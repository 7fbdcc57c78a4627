"""``--network slirp4netns`` and ``-p HOST:CONTAINER``: user-mode networking for a rootless
container, with ports of the host forwarded into it.

slirp4netns joins the container's network namespace (by the monitor's pid: the monitor creates
it), adds ``tap0`` with 10.0.2.100, a default route and a DNS forwarder at 10.0.2.3, and lives
until the monitor closes the ``--exit-fd`` pipe, i.e. exactly as long as the container. The
container may not reach the host's loopback (``--disable-host-loopback``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess

from pbuild.tools.launcher.config import PortMapping
from pbuild.tools.launcher.errors import LauncherError

GUEST_ADDRESS = "10.0.2.100"
DNS_ADDRESS = "10.0.2.3"
_READY_TIMEOUT_S = 10


def start_slirp(monitor_pid: int, exit_fd: int, container_dir: str, ports: tuple[PortMapping, ...]) -> None:
    """Start slirp4netns for the namespaces of ``monitor_pid`` and forward ``ports``."""
    # A unix socket path is limited to 108 bytes and the container directory may be deep:
    # slirp4netns binds it relative to its working directory, and we reach it through a
    # directory fd.
    log_path = os.path.join(container_dir, "slirp4netns.log")
    binary = shutil.which("slirp4netns")
    if binary is None:
        raise LauncherError(
            "-p/--network slirp4netns need slirp4netns, which is not installed",
            hint="install it (Debian: apt-get install slirp4netns), or use --network host",
        )
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise LauncherError(
            "-p/--network slirp4netns need read and write access to /dev/net/tun, which this user lacks",
            hint="most distributions make it mode 0666; or use --network host",
        )
    ready_r, ready_w = os.pipe()
    try:
        argv = [binary, "--configure", "--mtu=65520", "--disable-host-loopback", f"--exit-fd={exit_fd}",
                f"--ready-fd={ready_w}", "--api-socket=slirp.sock",
                f"--userns-path=/proc/{monitor_pid}/ns/user", str(monitor_pid), "tap0"]  # fmt: skip
        # Started from a short-lived child, so that slirp4netns is not our child: the launcher
        # may be a long-lived process (the engine) that would otherwise collect zombies.
        middle = os.fork()
        if middle == 0:
            code = 1
            try:
                with open(log_path, "ab") as log:
                    subprocess.Popen(argv, pass_fds=(exit_fd, ready_w), start_new_session=True, cwd=container_dir,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # fmt: skip
                code = 0
            finally:
                os._exit(code)
        if os.waitstatus_to_exitcode(os.waitpid(middle, 0)[1]) != 0:
            raise LauncherError(f"cannot start {binary}")
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], _READY_TIMEOUT_S)
        if not readable or os.read(ready_r, 1) != b"1":
            raise LauncherError(
                "slirp4netns did not set up the container's network",
                hint=f"see {log_path}",
            )
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    if ports:
        dir_fd = os.open(container_dir, os.O_PATH | os.O_CLOEXEC)
        try:
            for port in ports:
                _add_forward(f"/proc/self/fd/{dir_fd}/slirp.sock", port)
        finally:
            os.close(dir_fd)


def _add_forward(api_socket: str, port: PortMapping) -> None:
    request = {
        "execute": "add_hostfwd",
        "arguments": {
            "proto": port.protocol,
            "host_addr": port.host_ip,
            "host_port": port.host_port,
            "guest_addr": GUEST_ADDRESS,
            "guest_port": port.container_port,
        },
    }
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(_READY_TIMEOUT_S)
            s.connect(api_socket)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(s.recv(65536) or b"{}")
    except (OSError, ValueError) as e:
        raise LauncherError(f"cannot talk to slirp4netns at {api_socket}: {e}") from None
    if "error" in reply or "return" not in reply:
        desc = (reply.get("error") or {}).get("desc", reply)
        raise LauncherError(
            f"cannot publish port {port.host_port}->{port.container_port}/{port.protocol}: {desc}",
            hint="is the host port already in use?",
        )
