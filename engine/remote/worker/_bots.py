"""The Remote Workers API messages ``pbuild worker`` exchanges with a server's Bots service, in
protobuf wire format (``google.devtools.remoteworkers.v1test2``: bots.proto and worker.proto).

Hand-written like :mod:`pbuild.engine.remote._wire`, with its primitive encoders, for the same
reasons. Field numbers are those of the published API; unknown fields are skipped on decoding.
A lease's ``payload`` and ``result`` are ``google.protobuf.Any`` (``_execwire.AnyMessage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pbuild.engine.remote._execwire import (
    TYPE_PRECONDITION_FAILURE,
    AnyMessage,
    RichStatus,
    decode_pair,
    encode_pairs,
)
from pbuild.engine.remote._execwire import text_field as _text
from pbuild.engine.remote._wire import (
    Digest,
    enc_msg,
    enc_str,
    enc_varint,
    fields,
)
from pbuild.engine.remote._wire import (
    _as_bytes as _bytes,
)
from pbuild.engine.remote._wire import (
    _as_int as _int,
)

# BotStatus
BOT_OK = 1
BOT_UNHEALTHY = 2
BOT_TERMINATING = 4

# LeaseState
LEASE_PENDING = 1
LEASE_ACTIVE = 2
LEASE_COMPLETED = 4
LEASE_CANCELLED = 5

@dataclass(frozen=True)
class LeaseStatus:
    """``google.rpc.Status`` of a completed lease: code=1, message=2, details=3 (Any). A
    FAILED_PRECONDITION for blobs the CAS lacks carries a ``google.rpc.PreconditionFailure``
    (violations=1: type=1 ``MISSING``, subject=2 ``blobs/HASH/SIZE``), as REAPI asks, so that the
    client uploads them and retries."""

    code: int = 0
    message: str = ""
    missing: tuple[Digest, ...] = ()

    def encode(self) -> bytes:
        body = enc_varint(1, self.code) + enc_str(2, self.message)
        if self.missing:
            violations = b"".join(
                enc_msg(1, enc_str(1, "MISSING") + enc_str(2, f"blobs/{d.hash}/{d.size_bytes}")) for d in self.missing)
            body += enc_msg(3, AnyMessage(TYPE_PRECONDITION_FAILURE, violations).encode())
        return body

    @classmethod
    def decode(cls, data: bytes) -> LeaseStatus:
        rich = RichStatus.decode(data)
        return cls(rich.code, rich.message, rich.missing)


@dataclass(frozen=True)
class Device:
    """``Device``: handle=1, properties=2 (key=1, value=2)."""

    handle: str = ""
    properties: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        return enc_str(1, self.handle) + encode_pairs(2, self.properties)

    @classmethod
    def decode(cls, data: bytes) -> Device:
        handle, props = "", []
        for number, _, item in fields(data):
            if number == 1:
                handle = _text(item)
            elif number == 2:
                props.append(decode_pair(_bytes(item)))
        return cls(handle, tuple(props))


@dataclass(frozen=True)
class Worker:
    """``Worker``: devices=1 (the first is the one that runs the commands: servers match an
    action's platform against its properties), properties=2, configs=3 (BuildGrid reads its
    ``capacity`` config as the number of leases the bot takes at once)."""

    devices: tuple[Device, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()
    configs: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        return (b"".join(enc_msg(1, d.encode()) for d in self.devices) + encode_pairs(2, self.properties)
                + encode_pairs(3, self.configs))

    @classmethod
    def decode(cls, data: bytes) -> Worker:
        devices, props, configs = [], [], []
        for number, _, item in fields(data):
            if number == 1:
                devices.append(Device.decode(_bytes(item)))
            elif number == 2:
                props.append(decode_pair(_bytes(item)))
            elif number == 3:
                configs.append(decode_pair(_bytes(item)))
        return cls(tuple(devices), tuple(props), tuple(configs))


@dataclass(frozen=True)
class Lease:
    """``Lease``: id=7, payload=8 (Any), result=9 (Any), state=2, status=3 (google.rpc.Status).

    ``requirements`` (4), ``expire_time`` (5) and the deprecated ``assignment`` fields (1, 6) are
    not used by pbuild; they are dropped on decoding (the bot echoes only what it needs)."""

    id: str
    state: int
    payload: AnyMessage | None = None
    result: AnyMessage | None = None
    status: LeaseStatus | None = None

    def encode(self) -> bytes:
        body = enc_varint(2, self.state)
        if self.status is not None:
            body += enc_msg(3, self.status.encode())
        body += enc_str(7, self.id)
        if self.payload is not None:
            body += enc_msg(8, self.payload.encode())
        if self.result is not None:
            body += enc_msg(9, self.result.encode())
        return body

    @classmethod
    def decode(cls, data: bytes) -> Lease:
        lease_id, state = "", 0
        payload = result = None
        status = None
        for number, _, item in fields(data):
            if number == 7:
                lease_id = _text(item)
            elif number == 2:
                state = _int(item)
            elif number == 8:
                payload = AnyMessage.decode(_bytes(item))
            elif number == 9:
                result = AnyMessage.decode(_bytes(item))
            elif number == 3:
                status = LeaseStatus.decode(_bytes(item))
        return cls(lease_id, state, payload, result, status)


@dataclass(frozen=True)
class BotSession:
    """``BotSession``: name=1 (the server names it), bot_id=2, status=3, worker=4, leases=5,
    expire_time=6 (server-set; not echoed), version=7 (BuildGrid's lease-set version: echoed
    so the server knows which leases the bot has seen)."""

    bot_id: str
    status: int
    worker: Worker
    name: str = ""
    leases: tuple[Lease, ...] = ()
    version: str = ""
    expire_seconds: int = field(default=0, compare=False)

    def encode(self) -> bytes:
        return (enc_str(1, self.name) + enc_str(2, self.bot_id) + enc_varint(3, self.status)
                + enc_msg(4, self.worker.encode()) + b"".join(enc_msg(5, lease.encode()) for lease in self.leases)
                + enc_str(7, self.version))

    @classmethod
    def decode(cls, data: bytes) -> BotSession:
        name = bot_id = version = ""
        status = 0
        worker = Worker()
        leases = []
        expire = 0
        for number, _, item in fields(data):
            if number == 1:
                name = _text(item)
            elif number == 2:
                bot_id = _text(item)
            elif number == 3:
                status = _int(item)
            elif number == 4:
                worker = Worker.decode(_bytes(item))
            elif number == 5:
                leases.append(Lease.decode(_bytes(item)))
            elif number == 6:
                for sub, _, value in fields(_bytes(item)):
                    if sub == 1:
                        expire = _int(value)
            elif number == 7:
                version = _text(item)
        return cls(bot_id, status, worker, name, tuple(leases), version, expire)

    def with_leases(self, leases: tuple[Lease, ...]) -> BotSession:
        return replace(self, leases=leases)


def create_bot_session_request(parent: str, session: BotSession) -> bytes:
    """``CreateBotSessionRequest``: parent=1 (the instance name), bot_session=2."""
    return enc_str(1, parent) + enc_msg(2, session.encode())


def update_bot_session_request(session: BotSession) -> bytes:
    """``UpdateBotSessionRequest``: name=1 (the session's), bot_session=2; no update_mask (3):
    the whole session is sent."""
    return enc_str(1, session.name) + enc_msg(2, session.encode())
