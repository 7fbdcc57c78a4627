"""The worker's Bots API session: take leases, run them, report them, survive the server.

One :class:`WorkerSession` holds one ``BotSession`` at a time. It advertises the platform
properties of pbuild's action format (``OSFamily``, ``ISA``, ``pbuild-action-format``,
``pbuild-host``) on its primary device and ``--jobs`` as its capacity; then it calls
``UpdateBotSession`` in a loop:

* new leases (PENDING or already ACTIVE: BuildGrid sends them ACTIVE, with the Action inline)
  start at once on their own thread, up to ``--jobs``;
* while a slot is free the call is the server's long-poll for work; when a lease finishes the
  poll is cut short, so its COMPLETED state and ActionResult reach the server at once;
* a lease the server drops or marks CANCELLED has its sandbox killed and is not reported;
* a server that is unreachable is retried with backoff on the same session until the session
  would have expired; a server that no longer knows the session (NOT_FOUND, INVALID_ARGUMENT,
  FAILED_PRECONDITION...) or one past its expiry gets a new session. It never crashes the worker;
* on SIGTERM or SIGINT the worker says BOT_TERMINATING (no new leases), lets the running leases
  finish within the grace period, then hands back the rest (COMPLETED with UNAVAILABLE, which a
  server retries elsewhere) and exits. A second signal hands back at once.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pbuild.engine.remote import actionformat
from pbuild.engine.remote._execwire import TYPE_ACTION, TYPE_ACTION_RESULT, Action, AnyMessage, digest_of
from pbuild.engine.remote._wire import Digest, WireError
from pbuild.engine.remote.worker import _bots as bots
from pbuild.engine.remote.worker.execute import (
    CODE_CANCELLED,
    CODE_FAILED_PRECONDITION,
    CODE_INVALID_ARGUMENT,
    CODE_UNAVAILABLE,
    Executor,
    Kill,
    Outcome,
)

if TYPE_CHECKING:
    import grpc
    from pbuild.engine.remote.worker.cas import ServerChannel

_BOTS = "/google.devtools.remoteworkers.v1test2.Bots/"
_CREATE = _BOTS + "CreateBotSession"
_UPDATE = _BOTS + "UpdateBotSession"
_TYPE_DIGEST = "type.googleapis.com/build.bazel.remote.execution.v2.Digest"
_POLL_TIMEOUT_S = 30.0  # the server answers within 80 % of its keepalive or of this, whichever is less
_HEARTBEAT_S = 1.0  # between updates while every slot is busy
_MAX_BACKOFF_S = 5.0
_CALL_TIMEOUT_S = 20.0  # an update that cannot long-poll


@dataclass(frozen=True)
class WorkerOptions:
    """What ``pbuild worker`` was asked (see :mod:`pbuild.engine.remote.worker`)."""

    instance_name: str
    jobs: int
    name: str
    grace_s: float = 30.0


@dataclass
class _Running:
    lease_id: str
    action_digest: Digest
    kill: Kill
    started: float
    thread: threading.Thread | None = None
    outcome: Outcome | None = None
    handed_back: bool = False
    reported: bool = field(default=False)


def platform_properties() -> tuple[tuple[str, str], ...]:
    """What this worker advertises: what pbuild's actions ask of the machine that runs them."""
    from pbuild.engine.hashing import host_fingerprint

    return actionformat.platform_properties(host_fingerprint())


class WorkerSession:
    """The session loop (see the module docstring); :meth:`run` returns the exit code."""

    def __init__(self, channel: ServerChannel, executor: Executor, options: WorkerOptions, *,
                 log: Callable[[str], None]) -> None:
        self.channel = channel
        self.executor = executor
        self.options = options
        self.log = log
        self._changed = threading.Event()
        self._stop_requested = 0  # signals received
        self._stop_deadline: float | None = None
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._session: bots.BotSession | None = None
        self._expires_at = 0.0
        self._failures = 0

    # --- signals ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_requested += 1
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.options.grace_s
        if self._stop_requested > 1:
            self._stop_deadline = time.monotonic()
        self._changed.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested > 0

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        import grpc

        while True:
            self._hand_back_after_grace()
            with self._lock:
                busy = len(self._running)
            if self.stopping and busy == 0:
                self._final_update()
                return 0
            try:
                if self._session is None:
                    if self.stopping:
                        self._abandon_all("the worker is stopping")
                        return 0
                    self._create()
                else:
                    self._update()
                self._failures = 0
            except grpc.RpcError as exc:
                self._rpc_failed(exc)
            except WireError as exc:
                self.log(f"the server sent an undecodable BotSession ({exc}); starting a new session")
                self._drop_session()
                self._backoff()

    def _worker(self) -> bots.Worker:
        device = bots.Device(self.options.name, platform_properties())
        return bots.Worker((device,), (), (("capacity", str(self.options.jobs)),))

    def _status(self) -> int:
        return bots.BOT_TERMINATING if self.stopping else bots.BOT_OK

    def _create(self) -> None:
        self._changed.clear()
        session = bots.BotSession(self.options.name, self._status(), self._worker())
        request = bots.create_bot_session_request(self.options.instance_name, session)
        reply = self._call(_CREATE, request, long_poll=True)
        if reply is None:
            return
        self._session = bots.BotSession.decode(reply)
        self._expires_at = time.monotonic() + _expiry_in(self._session)
        self.log(f"session {self._session.name or '?'} on instance {self.options.instance_name or '(default)'}: "
                 f"up to {self.options.jobs} lease(s) at once")
        self._take(self._session.leases, reported=set())

    def _update(self) -> None:
        assert self._session is not None
        self._changed.clear()  # before reading the states: a later change cuts the call short
        leases, reported = self._lease_states()
        session = bots.BotSession(self.options.name, self._status(), self._worker(), self._session.name,
                                  leases, self._session.version)
        with self._lock:
            free = len(self._running) - len(reported) < self.options.jobs
        reply = self._call(_UPDATE, bots.update_bot_session_request(session),
                           long_poll=free and not self.stopping and not reported)
        if reply is None:
            return  # cut short by a change here; the next update tells the server
        answer = bots.BotSession.decode(reply)
        self._session = answer
        self._expires_at = time.monotonic() + _expiry_in(answer)
        with self._lock:
            for lease_id in reported:
                self._running.pop(lease_id, None)
        self._take(answer.leases, reported)
        with self._lock:
            full = len(self._running) >= self.options.jobs
        if full or self.stopping:
            self._changed.wait(_HEARTBEAT_S)

    def _call(self, method: str, request: bytes, *, long_poll: bool) -> bytes | None:
        """One Bots call; a long-poll is cancelled (``None``) as soon as something changes here."""
        if not long_poll:
            return self.channel.unary(method, request, timeout_s=_CALL_TIMEOUT_S)
        future = self.channel.unary_future(method, request, timeout_s=_POLL_TIMEOUT_S)
        future.add_done_callback(lambda _f: self._changed.set())
        # One event for both: the reply arriving, and a change here (a lease finished, a signal),
        # which was cleared before the leases' states were read for this request.
        while not future.done():
            self._changed.wait()
            if not future.done() and future.cancel():
                return None
        reply: bytes = future.result()
        return reply

    def _lease_states(self) -> tuple[tuple[bots.Lease, ...], set[str]]:
        """The leases as this worker sees them, and the ids reported COMPLETED in them."""
        leases: list[bots.Lease] = []
        reported: set[str] = set()
        with self._lock:
            for run in self._running.values():
                if run.outcome is None:
                    leases.append(bots.Lease(run.lease_id, bots.LEASE_ACTIVE))
                    continue
                outcome = run.outcome
                result = None
                if outcome.result is not None:
                    result = AnyMessage(TYPE_ACTION_RESULT, outcome.result.encode())
                status = _lease_status(outcome)
                leases.append(bots.Lease(run.lease_id, bots.LEASE_COMPLETED, result=result, status=status))
                reported.add(run.lease_id)
        return tuple(leases), reported

    def _take(self, leases: tuple[bots.Lease, ...], reported: set[str]) -> None:
        """Start the new leases; kill the running ones the server no longer lists."""
        listed = {lease.id for lease in leases if lease.state in (bots.LEASE_PENDING, bots.LEASE_ACTIVE)}
        with self._lock:
            for lease_id, run in list(self._running.items()):
                if lease_id not in listed and run.outcome is None:
                    run.kill.kill()
                    del self._running[lease_id]
                    self.log(f"lease {lease_id}: cancelled by the server; its sandbox was killed")
        for lease in leases:
            if lease.state not in (bots.LEASE_PENDING, bots.LEASE_ACTIVE) or lease.id in reported:
                continue
            with self._lock:
                if lease.id in self._running:
                    continue
            self._start(lease)

    def _start(self, lease: bots.Lease) -> None:
        run = _Running(lease.id, Digest("", 0), Kill(), time.monotonic())
        with self._lock:
            self._running[lease.id] = run
        if self.stopping:
            run.outcome = Outcome(CODE_UNAVAILABLE, f"worker {self.options.name} is stopping; lease handed back")
            run.handed_back = True
            self._changed.set()
            return
        thread = threading.Thread(target=self._work, args=(run, lease), name=f"lease-{lease.id}", daemon=True)
        run.thread = thread
        thread.start()

    def _work(self, run: _Running, lease: bots.Lease) -> None:
        try:
            action_digest, action = self._action_of(lease)
            run.action_digest = action_digest
            outcome = self.executor.run(action_digest, action, run.kill)
        except _BadLease as exc:
            outcome = Outcome(CODE_INVALID_ARGUMENT, f"lease {lease.id}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug must fail the lease, not kill the worker
            outcome = Outcome(13, f"worker {self.options.name}: internal error: {type(exc).__name__}: {exc}")
        if outcome.status_code == CODE_CANCELLED:
            if run.handed_back or self.stopping:
                outcome = Outcome(CODE_UNAVAILABLE, f"worker {self.options.name} stopped before the action "
                                                    f"finished; lease handed back")
            else:
                return  # cancelled by the server: dropped, nothing to report
        run.outcome = outcome
        self._log_lease(run, outcome)
        self._changed.set()

    def _action_of(self, lease: bots.Lease) -> tuple[Digest, Action]:
        payload = lease.payload
        if payload is None:
            raise _BadLease("the lease has no payload")
        try:
            if payload.type_url == TYPE_ACTION:
                return digest_of(payload.value), Action.decode(payload.value)
            if payload.type_url == _TYPE_DIGEST:
                digest = Digest.decode(payload.value)
                data = self.executor.cas.read(digest)
                return digest, Action.decode(data)
        except (WireError, UnicodeDecodeError) as exc:
            raise _BadLease(f"its Action is undecodable ({exc})") from None
        raise _BadLease(f"its payload is a {payload.type_url!r}, neither an Action nor a Digest")

    def _log_lease(self, run: _Running, outcome: Outcome) -> None:
        ms = (time.monotonic() - run.started) * 1000
        t = outcome.timings
        action = f"{run.action_digest.hash[:16]}/{run.action_digest.size_bytes}" if run.action_digest.hash else "?"
        if outcome.status_code == 0 or outcome.result is not None:
            what = f"exit {outcome.exit_code}"
        else:
            what = f"failed: {outcome.message}"
        self.log(f"lease {run.lease_id} action {action}: {what} in {ms:.0f} ms (fetch {t.fetch_s * 1000:.0f} ms "
                 f"for {t.bytes_fetched} input bytes, sandbox {t.sandbox_s * 1000:.0f} ms, "
                 f"upload {t.upload_s * 1000:.0f} ms)")

    # --- trouble --------------------------------------------------------------------------------

    def _rpc_failed(self, exc: grpc.RpcError) -> None:
        import grpc

        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        transient = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
        self._failures += 1
        if self._session is not None and transient and time.monotonic() < self._expires_at:
            if self._failures == 1:
                self.log(f"the server is unreachable ({code.name}); retrying")
            self._backoff()
            return
        if self._session is not None:
            why = "expired while the server was unreachable" if transient else f"refused ({code.name}: {details})"
            self.log(f"session {self._session.name}: {why}; starting a new session")
            self._drop_session()
        elif self._failures == 1 or self._failures % 20 == 0:
            self.log(f"cannot create a session ({code.name}: {details.strip() or 'no details'}); retrying")
        self._backoff()

    def _drop_session(self) -> None:
        """Forget the session: its leases are the server's again (it requeues them)."""
        self._abandon_all("the session ended")
        self._session = None

    def _abandon_all(self, why: str) -> None:
        with self._lock:
            runs = list(self._running.values())
            self._running.clear()
        for run in runs:
            run.kill.kill()
            if run.outcome is None:
                self.log(f"lease {run.lease_id}: abandoned ({why})")

    def _backoff(self) -> None:
        delay = min(_MAX_BACKOFF_S, 0.1 * (2 ** min(self._failures, 6))) * (0.5 + random.random() / 2)
        # The failed long-poll's own completion set the event: cleared first, or the wait would
        # return at once and a refusing server (RESOURCE_EXHAUSTED) would be called in a hot loop.
        # A signal during the wait sets it again and cuts the wait short, as it should.
        self._changed.clear()
        if not self.stopping:
            self._changed.wait(delay)
        self._changed.clear()

    def _hand_back_after_grace(self) -> None:
        if self._stop_deadline is None or time.monotonic() < self._stop_deadline:
            return
        with self._lock:
            runs = [r for r in self._running.values() if r.outcome is None and not r.handed_back]
        for run in runs:
            run.handed_back = True
            run.kill.kill()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=10)

    def _final_update(self) -> None:
        """Report what finished since the last update, and say the bot is going."""
        import grpc

        if self._session is None:
            return
        leases, _ = self._lease_states()
        session = bots.BotSession(self.options.name, bots.BOT_TERMINATING, self._worker(), self._session.name,
                                  leases, self._session.version)
        try:
            self.channel.unary(_UPDATE, bots.update_bot_session_request(session), timeout_s=5)
        except grpc.RpcError:
            pass


class _BadLease(Exception):
    pass


def _expiry_in(session: bots.BotSession) -> float:
    """Seconds until the server would expire the session (its expire_time; a guess without)."""
    if session.expire_seconds:
        return max(1.0, session.expire_seconds - time.time())
    return 60.0


def _lease_status(outcome: Outcome) -> bots.LeaseStatus:
    return bots.LeaseStatus(outcome.status_code, outcome.message, outcome.missing
                            if outcome.status_code == CODE_FAILED_PRECONDITION else ())


def default_name() -> str:
    """A bot id unique on this machine: the host name and the process id."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def eprint(line: str) -> None:
    print(f"pbuild worker: {line}", file=sys.stderr, flush=True)


__all__ = ["WorkerOptions", "WorkerSession", "default_name", "eprint", "platform_properties"]
