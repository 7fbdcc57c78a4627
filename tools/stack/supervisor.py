"""The stack's supervisor: one process per stack, as conmon is per container.

``up`` starts it (``python -m pbuild.tools.stack.supervisor``) when none is alive; it detaches
(its own session, nobody's child), listens on the stack's control socket and then:

- creates the stack's network (``network.create``) and starts the services' containers with the
  launcher (``start_container``, detached: each container's monitor is the supervisor's child),
  in dependency order (``spec.start_order``), waiting for each dependency's condition;
- owns the containers' stdout and stderr pipes and writes their logs (``logs.py``);
- runs healthchecks (``health.py``) and applies restart policies, with a backoff;
- answers ``up`` (apply a spec: recreate exactly the services whose config hash changed) and
  ``down`` (``teardown.py``), one request at a time, and exits after ``down``.

It is one asyncio loop, one thread: the launcher and the healthchecks fork, and forking a
process with threads can leave a child stuck on a lock that another thread held. A request's
steps that block (starting a container, stopping one) block the loop for that while; the pipes
buffer the services' output meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from pbuild.lib import atomicio
from pbuild.tools.launcher import process
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.launcher.lifecycle import remove_container, stop_containers
from pbuild.tools.launcher.state import ContainerState, ContainerStore, process_start_time
from pbuild.tools.stack import control, network, state, teardown
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.health import HealthState, next_probe, run_check
from pbuild.tools.stack.logs import LineWriter
from pbuild.tools.stack.network import StackNetwork
from pbuild.tools.stack.service import (
    BACKOFF_RESET_S,
    backoff,
    hosts_file,
    port_text,
    restarts_after,
    run_options,
)
from pbuild.tools.stack.spec import Dependency, ServiceSpec, StackSpec, config_hash, container_name
from pbuild.tools.stack.state import ServiceRecord, StackRecord

EXIT_FAILED = 1

Say = Callable[[str], Awaitable[None]]


class Output:
    """A container's stdout and stderr pipes, read by the loop into its logs; the log files are
    closed when both pipes ended."""

    def __init__(self, log_fd: int, raw_fd: int, out_r: int, err_r: int) -> None:
        self.files = (log_fd, raw_fd)
        self.pipes = {out_r: LineWriter(log_fd, raw_fd, "o"), err_r: LineWriter(log_fd, raw_fd, "e")}
        loop = asyncio.get_running_loop()
        for fd in self.pipes:
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.pipes[fd].feed(data)
        else:
            self._end(fd)

    def _end(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        self.pipes.pop(fd).close()
        os.close(fd)
        if not self.pipes:
            for f in self.files:
                os.close(f)

    def drain_and_close(self) -> None:
        """What the pipes still hold goes to the logs; then everything is closed."""
        for fd in list(self.pipes):
            with contextlib.suppress(OSError):
                while data := os.read(fd, 65536):
                    self.pipes[fd].feed(data)
            self._end(fd)


@dataclass
class Service:
    """The supervisor's live view of one service (mutable: only the loop touches it)."""

    spec: ServiceSpec
    config_hash: str
    address: str
    container: ContainerState | None = None
    monitor: int = 0
    status: str = "created"  # created | running | restarting | exited
    health: HealthState | None = None
    exit_code: int | None = None
    restarts: int = 0
    quick_exits: int = 0
    started_at: float = 0.0
    generation: int = 0  # one per container started: tasks of an older one stop
    stopping: bool = False
    pidfd: int = -1  # the monitor's, while it runs
    output: Output | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def record(self, stack: str) -> ServiceRecord:
        return ServiceRecord(
            name=self.spec.name,
            container_name=container_name(stack, self.spec.name),
            address=self.address,
            container_id=self.container.id if self.container else "",
            config_hash=self.config_hash,
            status=self.status,
            health=self.health.status if self.health else "",
            exit_code=self.exit_code,
            restarts=self.restarts,
            ports=tuple(port_text(p) for p in self.spec.ports),
        )


class Supervisor:
    def __init__(self, directory: str, name: str, origin: str) -> None:
        self.directory = directory
        self.name = name
        self.store = ContainerStore()
        self.record = StackRecord(name, origin, os.getpid(), process_start_time(os.getpid()) or 0)
        self.services: dict[str, Service] = {}
        self.net: StackNetwork | None = None
        self.lock = asyncio.Lock()
        self.ups: set[asyncio.Future[dict[str, Any]]] = set()
        self.finished = asyncio.Event()
        self._changed = asyncio.Event()
        self.logs_dir = os.path.join(directory, state.LOG_DIR)

    # -- records ---------------------------------------------------------------------------

    def save(self) -> None:
        """Write ``stack.json`` and wake whoever waits for a service's state."""
        record = replace(self.record, services=tuple(s.record(self.name) for s in self.services.values()))
        self.record = record
        with contextlib.suppress(OSError):
            state.save(self.directory, record)
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    # -- containers ------------------------------------------------------------------------

    def start(self, svc: Service) -> None:
        """Start ``svc``'s container; a ``StackError`` naming the service when it cannot."""
        from pbuild.tools.launcher.run import start_container

        assert self.net is not None
        hosts = network.hosts_entries(self.name, {s.spec.name: s.address for s in self.services.values()})
        try:
            options = run_options(self.name, svc.spec, config_hash=svc.config_hash, net=self.net,
                                  address=svc.address, hosts=hosts)  # fmt: skip
        except LauncherError as e:
            raise StackError(f"service {svc.spec.name}: {e.message}", hint=e.hint, exit_code=EXIT_FAILED) from None
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            started = start_container(options, process.Stdio(null, out_w, err_w))
        except LauncherError as e:
            os.close(out_r)
            os.close(err_r)
            raise StackError(f"service {svc.spec.name}: {e.message}", hint=e.hint, exit_code=EXIT_FAILED) from None
        finally:  # the container has its copies: the pipes end when it does
            for fd in (null, out_w, err_w):
                os.close(fd)
        svc.generation += 1
        svc.container = started.state
        svc.monitor = started.monitor_pid
        svc.status = "running"
        svc.exit_code = None
        svc.started_at = time.monotonic()
        svc.health = HealthState() if svc.spec.healthcheck else None
        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        log = os.open(os.path.join(self.logs_dir, f"{svc.spec.name}.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)  # fmt: skip
        raw = os.open(os.path.join(self.store.container_dir(started.state.id), "log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)  # fmt: skip
        svc.output = Output(log, raw, out_r, err_r)
        svc.pidfd = os.pidfd_open(svc.monitor)
        asyncio.get_running_loop().add_reader(svc.pidfd, self._on_exit, svc, svc.generation)
        if svc.spec.healthcheck is not None:
            self._spawn(svc, self._health_loop(svc, svc.generation))
        self.save()

    def _on_exit(self, svc: Service, generation: int) -> None:
        """The container's monitor ended: record the exit code, maybe restart."""
        self._reap(svc)
        if generation != svc.generation:
            return
        ran = time.monotonic() - svc.started_at
        svc.quick_exits = 0 if ran >= BACKOFF_RESET_S else svc.quick_exits + 1
        if not svc.stopping and restarts_after(svc.spec.restart, svc.exit_code or 0):
            svc.status = "restarting"
            self._spawn(svc, self._restart(svc, generation))
        self.save()

    def _reap(self, svc: Service) -> None:
        """Collect the monitor and the container's exit code (once)."""
        if svc.pidfd < 0:
            return
        with contextlib.suppress(ValueError, KeyError):
            asyncio.get_running_loop().remove_reader(svc.pidfd)
        os.close(svc.pidfd)
        svc.pidfd = -1
        code: int | None = None
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(svc.monitor, 0)
            code = process.exit_code_of(status)
        if svc.container is not None:
            recorded = self.store.load(svc.container.id)
            if recorded is not None and recorded.exit_code is not None:
                code = recorded.exit_code
        svc.status = "exited"
        svc.exit_code = code if code is not None else -1

    def _spawn(self, svc: Service, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        svc.tasks.add(task)
        task.add_done_callback(svc.tasks.discard)

    async def _restart(self, svc: Service, generation: int) -> None:
        """Start ``svc`` again after its backoff, unless an up or a down dealt with it meanwhile
        (they bump its generation or mark it stopping). Not under the request lock: a service
        may restart while an up waits for another one. The steps after the sleep do not await,
        so nothing else of the loop runs between the check and the start."""
        await asyncio.sleep(backoff(svc.quick_exits - 1))
        if svc.stopping or generation != svc.generation or self.services.get(svc.spec.name) is not svc:
            return
        self.remove_container(svc)
        svc.restarts += 1
        try:
            self.start(svc)
        except StackError as e:  # tried again after a longer delay, as Docker does
            print(f"pbuild: {e.message}", file=sys.stderr, flush=True)
            svc.quick_exits += 1
            svc.status = "restarting"
            self._spawn(svc, self._restart(svc, svc.generation))
            self.save()

    async def _health_loop(self, svc: Service, generation: int) -> None:
        check = svc.spec.healthcheck
        assert check is not None and svc.container is not None and svc.health is not None
        name = svc.container.name
        counted = time.monotonic()  # when a failure last counted (one per interval)
        probes = 0
        while True:
            await asyncio.sleep(next_probe(check, svc.health, probes))
            probes += 1
            if generation != svc.generation or svc.status != "running":
                return
            result = await run_check(self.store.root, name, check)
            if generation != svc.generation or svc.status != "running" or svc.health is None:
                return
            now = time.monotonic()
            counts = now - counted >= check.interval_s * 0.999
            if counts:
                counted = now
            before = svc.health.status
            svc.health = svc.health.after(check, result, now - svc.started_at, counts)
            if svc.health.status != before:
                self.save()

    def stop_services(self, services: list[Service], timeout: float) -> None:
        """Stop ``services`` (SIGTERM, SIGKILL after ``timeout``; no restart) and remove their
        containers."""
        for svc in services:
            svc.stopping = True
            for task in list(svc.tasks):
                task.cancel()
        stop_containers(self.store, [s.container for s in services if s.container], timeout)
        for svc in services:
            self.remove_container(svc)
            svc.stopping = False

    def remove_container(self, svc: Service) -> None:
        """Remove ``svc``'s container (it must have ended, or it is stopped first)."""
        if svc.container is None:
            return
        if svc.pidfd >= 0 and self.store.load(svc.container.id) is not None:
            stop_containers(self.store, [self.store.load(svc.container.id) or svc.container], 10.0)
        self._reap(svc)
        if svc.output is not None:
            svc.output.drain_and_close()
            svc.output = None
        remove_container(self.store, self.store.load(svc.container.id) or svc.container)
        svc.container = None
        svc.generation += 1
        svc.health = None
        self.save()

    # -- requests --------------------------------------------------------------------------

    async def up(self, spec: StackSpec, say: Say) -> None:
        """Apply ``spec``; on failure stop what this call started and raise a ``StackError``."""
        from pbuild.tools.stack.spec import start_order, to_json

        if spec.name != self.name:
            raise StackError(f"this supervisor runs stack {self.name!r}, not {spec.name!r}")
        if spec.origin != self.record.origin:
            raise StackError(
                f"the stack name {spec.name!r} is used by {self.record.origin}",
                hint=f"`pbuild down {self.record.origin}` first, or give this stack another name (project_name)",
            )
        waves = start_order(spec)
        wanted = {s.name: s for s in spec.services}
        for name in [n for n in self.services if n not in wanted]:
            orphan = self.services.pop(name)
            self.stop_services([orphan], 10.0)
            await say(f"Container {container_name(self.name, name)}  Removed (no longer in the stack)")
        self.save()
        if self.net is None or not network.alive(self.net):
            fresh = self.net is not None
            self.net = network.create(self.directory)
            if fresh:  # the old network is gone: every container lost its link
                self.stop_services(list(self.services.values()), 10.0)
            await say(f"Network {self.name}_default  Created")
        atomicio.write_bytes(os.path.join(self.directory, state.SPEC_FILE), to_json(spec), mode=0o600)
        stale: list[Service] = []
        for service in spec.services:
            digest = config_hash(service)
            svc = self.services.get(service.name)
            if svc is None:
                taken = [s.address for s in self.services.values()]
                svc = Service(service, digest, network.allocate(self.net, taken))
                self.services[service.name] = svc
            elif svc.config_hash != digest:
                stale.append(svc)
            svc.spec, svc.config_hash = service, digest
        if stale:
            for svc in stale:
                await say(f"Container {container_name(self.name, svc.spec.name)}  Recreate")
            self.stop_services(stale, 10.0)
        self.update_hosts()
        self.save()
        started: list[Service] = []
        try:
            for wave in waves:
                for name in wave:
                    svc = self.services[name]
                    for dependency in svc.spec.depends_on:
                        await self._wait_for(dependency, name, say)
                    cname = container_name(self.name, name)
                    if svc.status in ("running", "restarting"):
                        await say(f"Container {cname}  Running")
                        continue
                    if svc.container is not None:
                        self.remove_container(svc)
                    await say(f"Container {cname}  Starting")
                    self.start(svc)
                    started.append(svc)
                    await say(f"Container {cname}  Started")
            for svc in self.services.values():
                if svc.spec.healthcheck is not None:
                    await self._wait_healthy(svc, None, say)
                if svc in started and svc.status == "exited" and svc.exit_code and svc.spec.restart == "no":
                    raise StackError(
                        f"service {svc.spec.name} exited with code {svc.exit_code} during up",
                        hint=f"see `pbuild logs {container_name(self.name, svc.spec.name)}`",
                        exit_code=EXIT_FAILED,
                    )
        except (StackError, asyncio.CancelledError):
            if started:
                with contextlib.suppress(Exception):
                    await say("Stopping what this up started")
                self.stop_services(started, 10.0)
                self.save()
            raise

    def update_hosts(self) -> None:
        """Rewrite the running containers' ``/etc/hosts`` when the stack's names changed (a service
        added or dropped). The file is bind-mounted into the container, so it is rewritten in
        place (same inode), as Docker updates its ``/etc/hosts``."""
        assert self.net is not None
        hosts = network.hosts_entries(self.name, {s.spec.name: s.address for s in self.services.values()})
        for svc in self.services.values():
            if svc.container is None or svc.status != "running":
                continue
            path = os.path.join(self.store.container_dir(svc.container.id), "hosts")
            content = hosts_file(svc.container.name, self.net, svc.address, hosts)
            with contextlib.suppress(OSError), open(path, "r+b") as f:
                if f.read() != content:
                    f.seek(0)
                    f.write(content)
                    f.truncate()

    async def _wait_for(self, dependency: Dependency, dependent: str, say: Say) -> None:
        svc = self.services[dependency.service]
        if dependency.condition == "service_healthy":
            await self._wait_healthy(svc, dependent, say)
            return
        while True:
            if dependency.condition == "service_started" and svc.container is not None:
                return
            if dependency.condition == "service_completed_successfully" and svc.status in ("exited", "restarting"):
                if svc.exit_code == 0 and svc.status == "exited":
                    return
                raise StackError(
                    f"service {svc.spec.name} exited with code {svc.exit_code}, so {dependent} "
                    "(depends_on: service_completed_successfully) was not started",
                    hint=f"see `pbuild logs {container_name(self.name, svc.spec.name)}`",
                    exit_code=EXIT_FAILED,
                )
            if svc.container is None and svc.status != "restarting":
                raise StackError(
                    f"service {svc.spec.name} is not running, so {dependent} was not started",
                    exit_code=EXIT_FAILED,
                )
            await self.changed()

    async def _wait_healthy(self, svc: Service, dependent: str | None, say: Say) -> None:
        name = svc.spec.name
        because = f", so {dependent} (depends_on: service_healthy) was not started" if dependent else ""
        if svc.spec.healthcheck is None:
            raise StackError(
                f"service {dependent} waits for {name} to be healthy, but {name} has no healthcheck",
                hint=f"give {name} a healthcheck, or use condition service_started",
                exit_code=EXIT_FAILED,
            )
        told = False
        while True:
            health = svc.health.status if svc.health else ""
            if svc.status == "running" and health == "healthy":
                if told:
                    await say(f"Container {container_name(self.name, name)}  Healthy")
                return
            if svc.status in ("exited", "restarting"):
                raise StackError(
                    f"service {name} exited with code {svc.exit_code} before it was healthy{because}",
                    hint=f"see `pbuild logs {container_name(self.name, name)}`",
                    exit_code=EXIT_FAILED,
                )
            if health == "unhealthy":
                assert svc.health is not None and svc.spec.healthcheck is not None
                last = svc.health.last_output.strip().splitlines()[-1:] or ["(no output)"]
                raise StackError(
                    f"service {name} did not become healthy ({svc.spec.healthcheck.retries} checks "
                    f"failed in a row; the last said: {last[0]}){because}",
                    hint="fix the service or its healthcheck (`pbuild logs` shows the service's output)",
                    exit_code=EXIT_FAILED,
                )
            if svc.container is None:
                raise StackError(f"service {name} is not running{because}", exit_code=EXIT_FAILED)
            if not told:
                await say(f"Container {container_name(self.name, name)}  Waiting")
                told = True
            await self.changed()

    def down(self, timeout: float, volumes: bool, say: Callable[[str], None]) -> None:
        """Stop and remove everything of the stack (``teardown.remove_stack``)."""
        services = list(self.services.values())
        for svc in services:
            svc.stopping = True
            for task in list(svc.tasks):
                task.cancel()
        named = teardown.volumes_of(self.directory) if volumes else None
        teardown.remove_stack(self.directory, self.record, timeout=timeout, volumes=named, say=say,
                              store=self.store)  # fmt: skip
        for svc in services:
            self._reap(svc)
            if svc.output is not None:
                svc.output.drain_and_close()
                svc.output = None
        self.services.clear()
        self.net = None

    # -- the control socket ----------------------------------------------------------------

    async def serve(self, listener: socket.socket) -> None:
        server = await asyncio.start_unix_server(self._client, sock=listener)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self._terminated()))
        async with server:
            await self.finished.wait()

    async def _terminated(self) -> None:
        """SIGTERM to the supervisor: ``down`` (volumes kept), then exit."""
        async with self.lock:
            if not self.ended:
                self.down(10.0, False, lambda _text: None)
                self.ended = True
        self.finished.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] != os.geteuid():
                return  # the folder is 0700 already: another uid cannot get here but as root

            async def say(text: str) -> None:
                writer.write(control.encode({"event": "progress", "text": text}))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

            message = json.loads(await reader.readline() or b"{}")
            if not isinstance(message, dict):
                message = {}
            try:
                if message.get("op") == "up":
                    done = await self._up_while_connected(message, reader, say)
                else:
                    done = await self._handle(message, say)
            except Exception as e:  # a bug or an OS failure: say so, and keep supervising
                import traceback

                traceback.print_exc()  # into supervisor.log
                done = control.failure(StackError(
                    f"the stack's supervisor failed: {type(e).__name__}: {e}", exit_code=EXIT_FAILED,
                    hint=f"see {os.path.join(self.directory, 'supervisor.log')}"))  # fmt: skip
            writer.write(control.encode(done))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            if self.ended:
                self.finished.set()

    ended = False  # after down (or a first up that failed): the supervisor exits

    async def _up_while_connected(self, message: dict[str, Any], reader: asyncio.StreamReader, say: Say) -> dict[str, Any]:
        """An ``up`` is called off when its client goes away (Ctrl-C, killed) or a ``down``
        comes: what it started is stopped again, as for any failure."""
        work = asyncio.ensure_future(self._handle(message, say))
        hangup = asyncio.ensure_future(reader.read(1))
        self.ups.add(work)
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                return await work
            return control.failure(StackError("up was called off", exit_code=EXIT_FAILED))
        finally:
            hangup.cancel()
            self.ups.discard(work)

    async def _handle(self, message: dict[str, Any], say: Say) -> dict[str, Any]:
        from pbuild.tools.stack.spec import from_json

        op = message.get("op")
        if op == "ping":
            return {"event": "done", "ok": True}
        if op == "down":
            for work in list(self.ups):  # a down calls off an up still waiting for its services
                work.cancel()
        async with self.lock:
            if self.ended:  # a down, or a first up that failed, took everything away just now
                if op == "down":
                    return {"event": "done", "ok": True}
                return {**control.failure(StackError("the stack was just taken down", exit_code=EXIT_FAILED)),
                        "retry": True}  # fmt: skip
            try:
                if op == "up":
                    await self.up(from_json(str(message["spec"]).encode()), say)
                    return {"event": "done", "ok": True}
                if op == "down":
                    lines: list[str] = []
                    self.down(float(message.get("timeout", 10)), bool(message.get("volumes")), lines.append)
                    for text in lines:
                        await say(text)
                    self.ended = True
                    return {"event": "done", "ok": True}
                return control.failure(StackError(f"unknown request {op!r}"))
            except (StackError, asyncio.CancelledError) as e:
                if op == "up" and not any(s.container is not None for s in self.services.values()):
                    # Nothing of the stack runs (a first up that failed): leave nothing behind.
                    self.down(10.0, False, lambda _text: None)
                    self.ended = True
                if isinstance(e, asyncio.CancelledError):
                    raise
                return control.failure(e)


def main(argv: list[str]) -> int:
    """``python -m pbuild.tools.stack.supervisor READY_FD``: a spare supervisor (``client.Spare``).
    It detaches, then waits for its stack on stdin (``{"dir", "name", "origin"}``; EOF: exit),
    becomes its supervisor and writes ``ok`` (or ``E message``) to READY_FD once listening."""
    ready = int(argv[0])
    if os.fork() != 0:  # the starter waits for this parent only: the supervisor is nobody's child
        os._exit(0)
    with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
        comm.write(b"pbuild-stack")  # what `ps` shows (the holder is pbuild-stacknet)
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # not needed
    try:
        task = json.loads(line)
        directory, name, origin = str(task["dir"]), str(task["name"]), str(task["origin"])
    except (ValueError, KeyError, TypeError):
        os.write(ready, b"E a damaged request\n")
        return 1
    try:
        os.chdir(directory)
        log = os.open("supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for sig in (signal.SIGPIPE,):
            signal.signal(sig, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.unlink(state.SOCKET_FILE)  # a crashed supervisor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(state.SOCKET_FILE)  # relative: the path limit is 108 bytes
        listener.listen(16)
        supervisor = Supervisor(os.getcwd(), name, origin)
        supervisor.save()
    except (OSError, StackError) as e:
        os.write(ready, f"E cannot start the supervisor: {e}\n".encode())
        return 1
    os.write(ready, b"ok\n")
    os.close(ready)
    asyncio.run(supervisor.serve(listener))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
