"""A stack's network: what it adds to a stack's start, measured in one run.

Usage: ``python bench/bench_stack_network.py [--runs N] [--image oci:PATH]``. Without
``--image`` the tests' small busybox image is written to a temporary directory. Figures
(medians, milliseconds):

- ``holder create`` / ``holder remove``: ``pbuild.tools.stack.network.create`` (the detached
  holder, its namespaces, the bridge up) and ``remove``.
- ``start plain`` / ``start joined`` / ``start joined + port``: ``start_container`` of a
  detached container until its command was exec'd, on a network of its own (``--network
  none``), joined to the stack's bridge, and joined with one published port (bound on the host,
  relay forked).

No pbuild build is timed; each start's premise is checked on the container before any figure is
printed (bench/runcheck.py's ``refuse``): a plain container's network has a loopback only, a
joined one's an ``eth0`` (its veth to the stack's bridge); with a port, 127.0.0.1:PORT accepts a
connection.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))

import runcheck  # noqa: E402


def since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def interfaces(pid: int) -> set[str]:
    """The network interfaces of ``pid``'s network namespace."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines}


def check_start(kind: str, pid: int, port: int) -> None:
    """The container started as ``kind`` claims: on its own network, the stack's, with the port."""
    links = interfaces(pid)
    joined = "eth0" in links  # the veth to the stack's bridge (tools/launcher/join.py)
    if joined != (kind != "start plain"):
        expected = "an eth0 on the stack's bridge" if kind != "start plain" else "a loopback only"
        raise runcheck.refuse(kind, expected, f"the container's network has {sorted(links)}")
    if kind.endswith("port"):
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                raise runcheck.refuse(kind, f"127.0.0.1:{port} published", "nothing accepts connections there")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pbuild-bench-stacknet-"))
    os.environ.setdefault("PBUILD_RUNTIME_DIR", str(tmp / "run"))
    os.environ.setdefault("PBUILD_LAYER_STORE", str(tmp / "layers"))
    image = args.image
    if image is None:
        from tests.support.testimages import make_busybox_image

        image = f"oci:{make_busybox_image(tmp / 'image')}"

    from pbuild.tools.launcher import lifecycle, process, run
    from pbuild.tools.launcher.config import PortMapping, RunOptions
    from pbuild.tools.launcher.state import ContainerStore
    from pbuild.tools.stack import network

    null = os.open(os.devnull, os.O_RDWR)
    store = ContainerStore()
    figures: dict[str, list[float]] = {}
    base_port = 29900
    for i in range(args.runs + 1):  # the first round warms the layer store and filter cache
        start = time.perf_counter()
        net = network.create(str(tmp))
        figures.setdefault("holder create", []).append(since(start))
        hosts = network.hosts_entries("bench", {"svc": "10.89.0.2/24"})
        for kind in ("start plain", "start joined", "start joined + port"):
            options = RunOptions(
                image=image, command=("sleep", "60"), name=f"bench-{i}-{kind.replace(' ', '-').replace('+', 'p')}",
                detach=True, join=None if kind == "start plain" else network.join_record(net, "10.89.0.2/24", hosts),
                publish=(PortMapping(base_port + i, 8080, "tcp", "127.0.0.1"),) if kind.endswith("port") else (),
            )  # fmt: skip
            start = time.perf_counter()
            started = run.start_container(options, process.Stdio(null, null, null))
            figures.setdefault(kind, []).append(since(start))
            check_start(kind, started.state.pid, base_port + i)
            os.kill(started.state.pid, signal.SIGKILL)
            os.waitpid(started.monitor_pid, 0)
            lifecycle.remove_container(store, store.find(started.state.name))
        start = time.perf_counter()
        network.remove(net)
        figures.setdefault("holder remove", []).append(since(start))
    from pbuild.tools.fstree import remove_tree

    remove_tree(str(tmp))
    for name, values in figures.items():
        print(f"{name}: {statistics.median(values[1:]):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
