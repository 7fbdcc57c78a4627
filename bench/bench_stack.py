"""`pbuild up -d` and `pbuild down` of examples/stack against podman-compose, in the same run (issue 12).

    python bench/bench_stack.py [--runs 5] [--peer-only]

The example's images are built first (`./pbuild build //examples/stack/...`) and loaded into
podman from their docker-archives, so both sides start the same images and neither builds
anything while timed (pbuild's figure includes its no-op build check, as a user gets it).
podman-compose runs examples/stack/compose.yaml with an override file that names the loaded
images, with podman's runc runtime and the ulimits this machine needs, on a CNI bridge with
the dnsname plugin (service names resolve).

Each round alternates the two tools and times, for each:
- `up`: the `up -d` command's wall time, and `ready`: from its start until nginx on
  127.0.0.1:18080 answers `/` with the frontend's page made from the backend's answer
  (podman-compose returns before its services listen, and podman 4.3 cannot wait for
  `service_healthy`, so `ready` is the fair figure; pbuild's `up -d` waits for the backend's
  healthcheck);
- `down`: the `down` command's wall time.
A round counts only if it is what it claims: after `up`, all three services run and `/`,
`/api/hello` and `/static/hello.txt` answer through nginx; after `down`, nothing is left (no
container, pod, network, process or listener of the stack); pbuild's `up -d` writes its build
events and they must say nothing executed (bench/runcheck.py: the images were built before, so
the figure is of starting, not of building). Otherwise the bench stops and prints no figure. Medians over the rounds; the goal is pbuild `up -d` <= 0.5 x podman-compose.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runcheck  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "stack"
TARGET = "//examples/stack:web"
STACK = "web"  # the stack's name (BUILD.toml's target, compose.yaml's `name:`)
SERVICES = ("backend", "frontend", "nginx")
HOST, PORT = "127.0.0.1", 18080
READY_TIMEOUT_S = 60.0
# podman as DESIGN.md says it runs here: runc (crun refuses this machine's hybrid cgroups), and
# ulimits the container's runtime can set under them.
PODMAN_ARGS = "--runtime runc"
PODMAN_RUN_ARGS = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"


class Refused(SystemExit):
    """A run that was not what it claimed: no figure is printed."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench_stack: {message}; no figure")


@dataclass
class Round:
    up: float
    ready: float
    down: float


def run(
    argv: list[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise Refused(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def get(path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:18080/PATH; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORT}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, ValueError) as err:
        return 0, str(err)


def port_open() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, PORT)) == 0


def wait_ready(start: float) -> float:
    """Seconds from ``start`` until nginx serves the frontend's page with the backend's answer."""
    deadline = start + READY_TIMEOUT_S
    last = (0, "")
    while time.perf_counter() < deadline:
        last = get("/")
        if last[0] == 200 and "Hello from the backend" in last[1]:
            return time.perf_counter() - start
        time.sleep(0.01)
    raise Refused(f"the stack did not answer / through nginx within {READY_TIMEOUT_S:.0f} s: {last}")


def check_answers(tool: str) -> None:
    """Every path through nginx: the frontend (with the backend behind it), the API, the bind volume."""
    status, body = get("/api/hello")
    if status != 200 or json.loads(body).get("message") != "Hello from the backend":
        raise Refused(f"{tool}: /api/hello through nginx answered {status} {body!r}")
    static = (EXAMPLE / "static" / "hello.txt").read_text()
    if get("/static/hello.txt") != (200, static):
        raise Refused(f"{tool}: /static/hello.txt through nginx is not the bind volume's file")


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has NAME=VALUE: what pbuild started with the bench's
    runtime dir (the CLI, supervisors, network holders, launchers), whatever their names."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
    return found


class Pbuild:
    name = "pbuild"

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.env = {**os.environ, "PBUILD_RUNTIME_DIR": str(runtime)}
        self.cli = [str(REPO / "pbuild")]

    def available(self) -> bool:
        return run([*self.cli, "up", "--help"], env=self.env, check=False).returncode == 0

    def up(self) -> None:
        events = runcheck.fresh(self.runtime.parent / "up.events.jsonl")
        run([*self.cli, "up", "-d", "--build-event-json", events, TARGET], env=self.env)
        runcheck.expect_noop(events, "pbuild up -d (nothing to build)")

    def down(self) -> None:
        run([*self.cli, "down", TARGET], env=self.env)

    def check_up(self) -> None:
        ps = run([*self.cli, "ps", TARGET], env=self.env).stdout
        rows = {line.split()[0]: line.split()[1:] for line in ps.splitlines()[1:] if line.strip()}
        for service in SERVICES:
            if "running" not in rows.get(f"{STACK}-{service}-1", []):
                raise Refused(f"pbuild ps {TARGET} does not show {STACK}-{service}-1 running:\n{ps}")
        if "healthy" not in rows[f"{STACK}-backend-1"]:  # up -d waited for it
            raise Refused(f"pbuild up -d returned before the backend was healthy:\n{ps}")

    def check_down(self) -> None:
        ps = run([*self.cli, "ps", "-a"], env=self.env).stdout
        left = [s for s in SERVICES if f"{STACK}-{s}-1" in ps]
        if left:
            raise Refused(f"after pbuild down, pbuild ps -a still lists {left}:\n{ps}")
        for folder in ("containers", "stacks"):  # the containers' records, the stack's own
            left_over = list((self.runtime / folder).glob("*")) if (self.runtime / folder).is_dir() else []
            if left_over:
                raise Refused(f"after pbuild down, records remain: {left_over}")
        pids = processes_with_env("PBUILD_RUNTIME_DIR", str(self.runtime))
        if pids:
            raise Refused(f"after pbuild down, processes of the stack still run: {pids}")

    def cleanup(self) -> None:
        run([*self.cli, "down", "-v", TARGET], env=self.env, check=False)


class PodmanCompose:
    name = "podman-compose"

    def __init__(self, override: Path) -> None:
        exe = Path(sys.executable).with_name("podman-compose")
        self.cli = [
            str(exe) if exe.exists() else shutil.which("podman-compose") or "podman-compose",
            f"--podman-args={PODMAN_ARGS}",
            "-f",
            str(EXAMPLE / "compose.yaml"),
            "-f",
            str(override),
        ]

    def up(self) -> None:
        run([*self.cli, f"--podman-run-args={PODMAN_RUN_ARGS}", "up", "-d"])

    def down(self) -> None:
        run([*self.cli, "down"])

    def containers(self) -> list[dict[str, object]]:
        out = run(
            ["podman", "ps", "-a", "--format", "json", "--filter", f"label=io.podman.compose.project={STACK}"]
        )
        return json.loads(out.stdout or "[]")

    def check_up(self) -> None:
        states = {str(c["Labels"].get("com.docker.compose.service")): c["State"]  # type: ignore[attr-defined]
                  for c in self.containers()}  # fmt: skip
        if states != dict.fromkeys(SERVICES, "running"):
            raise Refused(f"podman-compose up: the containers are {states}, not all three running")

    def check_down(self) -> None:
        left = self.containers()
        if left:
            raise Refused(f"after podman-compose down, containers remain: {[c['Names'] for c in left]}")
        for kind, name in (("pod", f"pod_{STACK}"), ("network", f"{STACK}_default")):
            if run(["podman", kind, "exists", name], check=False).returncode == 0:
                raise Refused(f"after podman-compose down, the {kind} {name} remains")

    def cleanup(self) -> None:
        run([*self.cli, "down", "-v"], check=False)


def one_round(tool: Pbuild | PodmanCompose) -> Round:
    if port_open():
        raise Refused(f"{HOST}:{PORT} is in use before {tool.name} up; stop what listens there")
    start = time.perf_counter()
    tool.up()
    up = time.perf_counter() - start
    ready = wait_ready(start)
    tool.check_up()
    check_answers(tool.name)
    start = time.perf_counter()
    tool.down()
    down = time.perf_counter() - start
    if port_open():
        raise Refused(f"after {tool.name} down, {HOST}:{PORT} still accepts connections")
    tool.check_down()
    return Round(up, ready, down)


def load_images(work: Path) -> Path:
    """Load each service's docker-archive into podman; an override file naming the loaded images."""
    compose = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())
    override: dict[str, dict[str, dict[str, str]]] = {"services": {}}
    for service, config in compose["services"].items():
        label = str(config["image"])
        package, _, name = label.removeprefix("//").partition(":")
        archive = REPO / "pbuild-out" / package / name / "image.tar"
        loaded = run(["podman", "load", "-q", "-i", str(archive)]).stdout.strip().splitlines()[-1]
        override["services"][service] = {"image": loaded.split(": ", 1)[-1]}
    path = work / "podman-images.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def report(tool: str, rounds: list[Round], field: str, label: str) -> float:
    values = [getattr(r, field) for r in rounds]
    median = statistics.median(values)
    print(f"{tool:<15} {label:<6} median {median:6.3f} s over {len(values)} runs (min {min(values):.3f})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--peer-only",
        action="store_true",
        help="only podman-compose (while `pbuild up` is not a command yet)",
    )
    args = parser.parse_args()
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            raise SystemExit(f"bench_stack: needs {tool} (bash .ci/install)")
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-stack-") as tmp:
        work = Path(tmp)
        events = str(work / "build.events.jsonl")
        run([str(REPO / "pbuild"), "build", "-q", "--build-event-json", events, "//examples/stack/..."])
        runcheck.expect_built(events, "the stack's images, built before the rounds")
        tools: list[Pbuild | PodmanCompose] = [PodmanCompose(load_images(work))]
        if not args.peer_only:
            ours = Pbuild(work / "run")
            if not ours.available():
                raise SystemExit(
                    "bench_stack: `pbuild up` is not a command yet (use --peer-only for podman-compose alone)"
                )
            tools.insert(0, ours)
        rounds: dict[str, list[Round]] = {tool.name: [] for tool in tools}
        try:
            for tool in tools:
                one_round(tool)  # warm-up: podman's storage and network, pbuild's run plans
            for _ in range(args.runs):
                for tool in tools:
                    rounds[tool.name].append(one_round(tool))
        finally:
            for tool in tools:
                tool.cleanup()
    medians: dict[str, dict[str, float]] = {}
    for name, got in rounds.items():
        medians[name] = {f: report(name, got, f, label)
                         for f, label in (("up", "up -d"), ("ready", "ready"), ("down", "down"))}  # fmt: skip
    if "pbuild" in medians:
        ours, peer = medians["pbuild"], medians["podman-compose"]
        print(
            f"ratio pbuild/podman-compose: up -d until answering {ours['ready'] / peer['ready']:.2f} (goal <= 0.5), "
            f"up -d command {ours['up'] / peer['up']:.2f}, down {ours['down'] / peer['down']:.2f}"
        )


if __name__ == "__main__":
    main()
