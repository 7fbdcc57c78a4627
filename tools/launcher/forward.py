"""Published ports of a stack's service: from the host's network namespace into the service's.

Two halves, on either side of the fork:

- :func:`bind`, in the launcher before anything is forked: one listening socket per port in the
  *host's* namespace, so a port already in use is a clear error at once (naming the port) and
  nothing was started yet.
- :func:`serve`, in a process inside the service's namespaces (a child of the container's
  monitor that dies with it): a socket keeps the namespace it was created in, so it accepts on
  the host's port and connects to the service's own address, relaying both ways.

Why not slirp4netns's forwarder: it only forwards into its own tap device, and a stack service
without ``outbound`` has none. The relay is small enough to write with ``selectors``: TCP with
half-close (one side's EOF becomes a shutdown of the other side's write half once its data is
out) and bounded buffers (a side is not read while the other has 256 KiB pending); UDP by one
connected socket per client address, dropped after a minute without traffic.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from typing import NamedTuple

from pbuild.tools.launcher.config import PortMapping
from pbuild.tools.launcher.errors import LauncherError

_BUFFER_LIMIT = 256 * 1024
_CHUNK = 65536
_UDP_IDLE_S = 60.0


class Listener(NamedTuple):
    """A bound host socket and the port of the service it leads to."""

    sock: socket.socket
    port: PortMapping


def bind(ports: Sequence[PortMapping]) -> list[Listener]:
    """Bind every published port on the host now; a LauncherError naming the first that cannot
    be bound (and nothing left bound)."""
    listeners: list[Listener] = []
    try:
        for port in ports:
            listeners.append(Listener(_bind_one(port), port))
    except BaseException:
        close(listeners)
        raise
    return listeners


def _bind_one(port: PortMapping) -> socket.socket:
    spec = f"{port.host_ip}:{port.host_port}/{port.protocol}"
    if port.protocol not in ("tcp", "udp"):
        raise LauncherError(f"cannot publish {spec}: the protocol is tcp or udp")
    if not 0 < port.host_port < 65536 or not 0 < port.container_port < 65536:
        raise LauncherError(f"cannot publish {spec} -> {port.container_port}: ports are 1 to 65535")
    family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    try:
        if kind == socket.SOCK_STREAM:
            # A port in TIME_WAIT from a service just stopped is free to take; one in use is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((port.host_ip, port.host_port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LauncherError(
                f"cannot publish port {spec}: it is already in use",
                hint=f"stop what listens on {port.host_ip}:{port.host_port}, or publish another host port",
            ) from None
        if e.errno == errno.EACCES:
            raise LauncherError(
                f"cannot publish port {spec}: this user may not bind it",
                hint="ports below 1024 need root (or net.ipv4.ip_unprivileged_port_start); use a higher host port",
            ) from None
        raise LauncherError(f"cannot publish port {spec}: {e.strerror}") from None
    return sock


def close(listeners: Sequence[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()


class _Side:
    """One socket of a relayed TCP connection: ``out`` is what still has to be written to it."""

    def __init__(self, sock: socket.socket, connecting: bool = False) -> None:
        self.sock = sock
        self.out = bytearray()
        self.connecting = connecting
        self.read_eof = False  # we read its EOF (or stop reading it)
        self.write_shut = False  # we shut its write half down
        self.peer: _Side = self


class _Relay:
    def __init__(self, listeners: Sequence[Listener], address: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.address = address
        self.registered: dict[int, int] = {}
        # UDP: (listener fd, client address) -> connected socket to the service, last activity
        self.sessions: dict[tuple[int, tuple[str, int]], tuple[socket.socket, float]] = {}
        for listener in listeners:
            self.selector.register(listener.sock, selectors.EVENT_READ, ("listen", listener))

    def run(self) -> None:
        while True:
            timeout = 10.0 if self.sessions else None
            for key, mask in self.selector.select(timeout):
                kind, what = key.data
                if kind == "listen":
                    if what.port.protocol == "tcp":
                        self._accept(what)
                    else:
                        self._datagram(what)
                elif kind == "udp":
                    self._reply(*what)
                else:
                    try:
                        self._event(what, mask)
                    except Exception:  # noqa: BLE001 - a bug in one relay must not end all of them
                        with contextlib.suppress(Exception):
                            self._drop(what)
            self._expire()

    # TCP
    def _accept(self, listener: Listener) -> None:
        try:
            client, _ = listener.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError:  # out of fds: drop this one, keep serving the rest
            return
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        upstream.setblocking(False)
        code = upstream.connect_ex((self.address, listener.port.container_port))
        if code not in (0, errno.EINPROGRESS):
            _reset(client)
            upstream.close()
            return
        a, b = _Side(client), _Side(upstream, connecting=code != 0)
        a.peer, b.peer = b, a
        self._update(a)
        self._update(b)

    def _event(self, side: _Side, mask: int) -> None:
        try:
            if side.connecting and mask & selectors.EVENT_WRITE:
                error = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, "connect")
                side.connecting = False
            if mask & selectors.EVENT_READ and not side.read_eof:
                data = side.sock.recv(_CHUNK)
                if data:
                    side.peer.out += data
                else:
                    side.read_eof = True
            self._flush(side)
            self._flush(side.peer)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(side)
            return
        if side.write_shut and side.peer.write_shut:
            self._drop(side, graceful=True)
            return
        self._update(side)
        self._update(side.peer)

    def _flush(self, side: _Side) -> None:
        """Write what is pending to ``side``; pass on its peer's EOF once nothing is."""
        if side.connecting:
            return
        if side.out:
            try:
                sent = side.sock.send(side.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            del side.out[:sent]
        if not side.out and side.peer.read_eof and not side.write_shut:
            side.sock.shutdown(socket.SHUT_WR)
            side.write_shut = True

    def _update(self, side: _Side) -> None:
        events = 0
        if side.connecting or side.out:
            events |= selectors.EVENT_WRITE
        if not side.connecting and not side.read_eof and len(side.peer.out) < _BUFFER_LIMIT:
            events |= selectors.EVENT_READ
        fd = side.sock.fileno()
        now = self.registered.get(fd, 0)
        if events == now:
            return
        if not events:
            self.selector.unregister(side.sock)
            del self.registered[fd]
        elif not now:
            self.selector.register(side.sock, events, ("tcp", side))
            self.registered[fd] = events
        else:
            self.selector.modify(side.sock, events, ("tcp", side))
            self.registered[fd] = events

    def _drop(self, side: _Side, graceful: bool = False) -> None:
        for one in (side, side.peer):
            fd = one.sock.fileno()
            if self.registered.pop(fd, None) is not None:
                self.selector.unregister(one.sock)
            if graceful:
                one.sock.close()
            else:
                _reset(one.sock)

    # UDP
    def _datagram(self, listener: Listener) -> None:
        try:
            data, client = listener.sock.recvfrom(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        key = (listener.sock.fileno(), client)
        session = self.sessions.get(key)
        if session is None:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            upstream.setblocking(False)
            try:
                upstream.connect((self.address, listener.port.container_port))
            except OSError:
                upstream.close()
                return
            self.selector.register(upstream, selectors.EVENT_READ, ("udp", (listener, client, key)))
            session = (upstream, 0.0)
        self.sessions[key] = (session[0], time.monotonic())
        with contextlib.suppress(OSError):
            session[0].send(data)

    def _reply(self, listener: Listener, client: tuple[str, int], key: tuple[int, tuple[str, int]]) -> None:
        upstream, _ = self.sessions[key]
        try:
            data = upstream.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. ECONNREFUSED from an ICMP port unreachable: nothing to pass on
            return
        self.sessions[key] = (upstream, time.monotonic())
        with contextlib.suppress(OSError):
            listener.sock.sendto(data, client)

    def _expire(self) -> None:
        if not self.sessions:
            return
        now = time.monotonic()
        for key, (upstream, last) in list(self.sessions.items()):
            if now - last > _UDP_IDLE_S:
                self.selector.unregister(upstream)
                upstream.close()
                del self.sessions[key]


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0): the client sees the failure instead of a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def serve(listeners: Sequence[Listener], address: str) -> None:
    """Relay every listener's connections (datagrams) to ``address``:its container port, for
    ever; run in the service's network namespace."""
    _Relay(listeners, address).run()
