"""Start the real peers the remote-cache and registry tests talk to.

Each helper is a context manager that starts one server on a free 127.0.0.1 port inside a
directory the caller owns (a pytest ``tmp_path``), waits until it accepts connections, yields a
small record describing it, and stops it afterwards. Nothing here is mocked: nginx with WebDAV
PUT (Bazel's HTTP cache protocol), BuildGrid (REAPI over gRPC) and Debian's ``docker-registry``
(the OCI distribution API) are the programs users run. Two tiny socket servers cover faults a
well-behaved server cannot produce: a body that stops early and a server that never answers.

Other test modules import these and wrap them in their own fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it; a race is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(program: str) -> str:
    """The path of ``program``, or skip with the package that provides it."""
    found = shutil.which(program)
    if found is None:
        venv_bin = Path(sys.executable).parent / program
        if venv_bin.exists():
            return str(venv_bin)
        pytest.skip(f"{program} is not installed (see .ci/run for the packages the tests need)")
    return found


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {_START_TIMEOUT_S}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # The servers run in their own session so a signal reaches their workers too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def _started(prepare: Callable[[int], list[str]], log: Path) -> Iterator[int]:
    """Start the server ``prepare(port)`` configures (returning its argv) on a free port; yield
    the port. Another test may grab the port between our probe and the server's bind: then the
    server exits at once and we try again with a new port."""
    for attempt in range(3):
        port = free_port()
        argv = prepare(port)
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            _wait_for_port(port, proc, log)
        except RuntimeError:
            _stop(proc)
            if attempt == 2:
                raise
            continue
        try:
            yield port
        finally:
            _stop(proc)
        return


# ---------------------------------------------------------------------------------------------
# nginx: the HTTP cache


@dataclass(frozen=True)
class Nginx:
    """A running nginx. ``root`` is the directory it serves; ``url(prefix)`` builds cache URLs.

    Locations: ``/cache/`` (WebDAV PUT), ``/auth/`` (the same behind basic auth with
    ``user``/``password``), ``/fail500/`` (every request answers 500), ``/readonly/`` (GET and
    HEAD only; PUT answers 403).
    """

    port: int
    root: Path
    user: str = "ci"
    password: str = "s3cret"

    def url(self, prefix: str = "cache", *, userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}/{prefix}"

    @property
    def access_log(self) -> Path:
        return self.root.parent / "nginx" / "access.log"

    def requests(self) -> list[tuple[str, str, int, int, int]]:
        """The logged requests (method, uri, status, request bytes, response bytes)."""
        try:
            lines = self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            method, uri, status, sent, received = line.split(" ")
            out.append((method, uri, int(status), int(sent), int(received)))
        return out


_NGINX_CONF = """
daemon off;
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format pbuild '$request_method $uri $status $request_length $bytes_sent';
    {access_log}
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /cache/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
        location /auth/ {{
            auth_basic "pbuild cache";
            auth_basic_user_file {dir}/htpasswd;
            dav_methods PUT;
            create_full_put_path on;
        }}
        location /readonly/ {{
            limit_except GET HEAD {{ deny all; }}
        }}
        location /fail500/ {{
            return 500;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_cache(base: Path, *, access_log: bool = False) -> Iterator[Nginx]:
    """nginx serving ``base/root`` with the locations described on :class:`Nginx`.

    With ``access_log``, every request is logged to ``Nginx.access_log`` as
    ``METHOD URI STATUS REQUEST_BYTES RESPONSE_BYTES`` (the benchmarks count uploads with it).
    """
    nginx = require("nginx")
    htpasswd = require("htpasswd")
    conf_dir = base / "nginx"
    root = base / "root"
    (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
    for location in ("cache", "auth", "readonly", "fail500"):
        (root / location).mkdir(parents=True, exist_ok=True)
    subprocess.run([htpasswd, "-b", "-c", str(conf_dir / "htpasswd"), Nginx.user, Nginx.password],
                   check=True, capture_output=True)
    # As root, nginx workers would drop to `nobody`, who cannot write into a private tmp dir.
    user_line = "user root;" if os.geteuid() == 0 else ""
    conf = conf_dir / "nginx.conf"
    log = f"access_log {conf_dir}/access.log pbuild;" if access_log else "access_log off;"

    def prepare(port: int) -> list[str]:
        conf.write_text(_NGINX_CONF.format(user=user_line, dir=conf_dir, port=port, root=root, access_log=log))
        return [nginx, "-p", str(conf_dir), "-c", str(conf)]

    with _started(prepare, conf_dir / "out.log") as port:
        yield Nginx(port=port, root=root)


# ---------------------------------------------------------------------------------------------
# BuildGrid: the REAPI cache


@dataclass(frozen=True)
class BuildGrid:
    port: int
    instance_name: str
    read_only_instance: str = "read-only"

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"


_BUILDGRID_CONF = """
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
storages:
  - {storage}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: {allow_updates}
    cache-failed-actions: true
  - !lru-action-cache &ac-read-only
    storage: *cas
    max-cached-refs: 1000
    allow-updates: false
instances:
  - name: "{instance}"
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
  - name: "{read_only_instance}"
    services:
      - !action-cache
        cache: *ac-read-only
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


@contextlib.contextmanager
def buildgrid_server(base: Path, *, instance_name: str = "", allow_updates: bool = True,
                     disk_storage: Path | None = None) -> Iterator[BuildGrid]:
    """``bgd server start`` with an in-memory CAS and action cache (no execution service).

    Besides ``instance_name`` it serves the instance :data:`BuildGrid.read_only_instance`, whose
    action cache refuses updates (one server is cheaper to start than two: ~8 s each). With
    ``disk_storage``, the CAS lives in that folder instead (blob ``H`` is ``cas/objects/H[:2]/H[2:]``).
    """
    bgd = require("bgd")
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "buildgrid.yml"
    read_only = BuildGrid.read_only_instance

    def prepare(port: int) -> list[str]:
        storage = f'!disk-storage &cas\n    path: "{disk_storage}"' if disk_storage else "!lru-storage &cas\n    size: 512M"
        conf.write_text(_BUILDGRID_CONF.format(port=port, instance=instance_name, read_only_instance=read_only,
                                               allow_updates="true" if allow_updates else "false", storage=storage))
        return [bgd, "server", "start", str(conf)]

    with _started(prepare, base / "buildgrid.log") as port:
        yield BuildGrid(port=port, instance_name=instance_name)


# ---------------------------------------------------------------------------------------------
# PostgreSQL and BuildGrid's Execution service (REAPI remote execution, the Bots API)


def _postgres_program(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's versioned folder (the package puts
    initdb and pg_ctl there and links only the client programs into /usr/bin)."""
    found = shutil.which(name)
    if found is not None:
        return found
    import glob

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    pytest.skip(f"{name} is not installed (Debian package postgresql; see .ci/install)")


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster on 127.0.0.1 (trust authentication, superuser ``user``).

    ``create_database()`` makes a fresh database, so tests can share one server."""

    host: str
    port: int
    user: str
    db: str
    data_dir: Path
    _run_as: str | None = None

    def url(self, db: str | None = None, *, driver: str = "") -> str:
        """``postgresql[+DRIVER]://USER@HOST:PORT/DB`` (SQLAlchemy wants ``+psycopg2``)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{db or self.db}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by ``user``); return its name."""
        createdb = _postgres_program("createdb")
        subprocess.run([createdb, "-h", self.host, "-p", str(self.port), "-U", self.user, name],
                       check=True, capture_output=True, user=self._run_as)
        return name


@contextlib.contextmanager
def postgres_server(base: Path, *, db: str = "pbuild") -> Iterator[Postgres]:
    """initdb + ``pg_ctl start`` on a free port; ``createdb db``; stopped and removed on exit.

    PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user in a
    folder of its own under the system temp dir (pytest's ``tmp_path`` is private to root);
    ``base`` then only holds the log's copy. Connections use trust authentication on loopback.
    """
    import tempfile

    initdb, pg_ctl = _postgres_program("initdb"), _postgres_program("pg_ctl")
    base.mkdir(parents=True, exist_ok=True)
    run_as: str | None = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root needs the postgres user (Debian package postgresql)")
        run_as = "postgres"
        home = Path(tempfile.mkdtemp(prefix="pbuild-pg-"))
        os.chown(home, pw.pw_uid, pw.pw_gid)
    else:
        home = Path(tempfile.mkdtemp(prefix="pbuild-pg-", dir=base))
    data = home / "data"
    user = "pbuild"
    log = home / "postgres.log"
    try:
        subprocess.run([initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, user=run_as, cwd=home)
        for attempt in range(3):
            port = free_port()
            # Unix sockets in our own folder: the system one (/var/run/postgresql) may not exist.
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off -c max_connections=200"
            started = subprocess.run([pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "30",
                                      "start"], capture_output=True, user=run_as, cwd=home)
            if started.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr.decode(errors='replace')}\n"
                                   f"{_tail(log)}")
        server = Postgres(host="127.0.0.1", port=port, user=user, db=db, data_dir=data, _run_as=run_as)
        try:
            server.create_database(db)
            yield server
        finally:
            subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                           user=run_as)
            with contextlib.suppress(OSError):
                shutil.copy(log, base / "postgres.log")
    finally:
        shutil.rmtree(home, ignore_errors=True)


_BUILDGRID_EXEC_CONF = """
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
# gRPC's concurrent-RPC limit is this pool's size (default 5 per core): every Execute stream and
# every worker's long-poll holds one, so a client with 16 actions in flight would lock workers out.
thread-pool-size: 256
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: "{sql_url}"
    pool-size: 10
    max-overflow: 20
storages:
  - !lru-storage &cas
    size: 1024M
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    property-set: !dynamic-property-set
      match-property-keys: [{match_keys}]
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 1.0
    poll-interval: 0.1
    max-job-attempts: 5
    assigners:
      # BuildGrid's default jitter adds up to a second to each assignment round: tests and
      # benchmarks want the queue's own latency, a few tens of milliseconds.
      - !priority-age-assigner
        count: 2
        interval: 0.02
        jitter-factor: 0.01
        failure-backoff: 0.2
        busy-sleep-factor: 0.01
instances:
  - name: "{instance}"
    services:
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 10
        endpoints: [execution, operations]
      - !bots
        scheduler: *scheduler
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""

# The platform keys pbuild's actions carry beside REAPI's OSFamily and ISA (see
# pbuild.engine.remote.actionformat); BuildGrid refuses an action with an unregistered key.
PBUILD_PLATFORM_KEYS = ("pbuild-action-format", "pbuild-host")


class BuildGridExecution:
    """A running ``bgd server`` with Execution and Bots on one instance (CAS in memory, job state
    in PostgreSQL). :meth:`stop` and :meth:`start` restart it on the same port and database, as
    a server restart looks to its clients and workers (the in-memory CAS starts empty again)."""

    def __init__(self, conf: Path, log: Path, port: int, instance_name: str) -> None:
        self.conf = conf
        self.log = log
        self.port = port
        self.instance_name = instance_name
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (again) and wait until it listens; raises when it does not."""
        if self._proc is not None and self._proc.poll() is None:
            return
        with open(self.log, "ab") as log_file:
            self._proc = subprocess.Popen([require("bgd"), "server", "start", str(self.conf)], stdout=log_file,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        _wait_for_port(self.port, self._proc, self.log)

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
        # The port must be free again before start(): wait until nobody listens on it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@contextlib.contextmanager
def buildgrid_execution_server(base: Path, postgres: Postgres, *, instance_name: str = "",
                               database: str | None = None, keepalive_s: int = 8
                               ) -> Iterator[BuildGridExecution]:
    """BuildGrid 0.4's remote execution: ``bgd migrate apply`` on ``database`` (default: the
    server's own), then ``bgd server start`` with the Execution, Operations, Bots, CAS,
    ByteStream and ActionCache services (Capabilities comes with them) on ``instance_name``.

    ``keepalive_s`` is how long the scheduler waits to hear from a bot before it gives the bot's
    leases to another: short, so that a killed worker's action is retried within the test (the
    bots' long-poll lasts 80 % of it, and BuildGrid wants that to be at least 3 s).
    """
    bgd = require("bgd")
    base.mkdir(parents=True, exist_ok=True)
    db = database or postgres.db
    migrate = subprocess.run([bgd, "migrate", "apply", postgres.url(db)], capture_output=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"bgd migrate apply failed:\n{migrate.stdout.decode(errors='replace')}"
                           f"{migrate.stderr.decode(errors='replace')}")
    conf = base / "buildgrid-exec.yml"
    log = base / "buildgrid.log"
    keys = ", ".join(f'"{k}"' for k in PBUILD_PLATFORM_KEYS)
    server: BuildGridExecution | None = None
    for attempt in range(3):
        port = free_port()
        conf.write_text(_BUILDGRID_EXEC_CONF.format(port=port, sql_url=postgres.url(db, driver="psycopg2"),
                                                    match_keys=keys, keepalive=keepalive_s,
                                                    instance=instance_name))
        server = BuildGridExecution(conf, log, port, instance_name)
        try:
            server.start()
            break
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# docker-registry: the OCI registry


@dataclass(frozen=True)
class Registry:
    port: int
    storage: Path
    user: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


_REGISTRY_CONF = """
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{auth}
"""


@contextlib.contextmanager
def docker_registry(base: Path, *, user: str | None = None, password: str | None = None,
                    token: TokenServer | None = None) -> Iterator[Registry]:
    """Debian's ``docker-registry serve`` over plain HTTP; with ``user``, htpasswd (bcrypt) auth;
    with ``token``, Bearer-token auth against that token server."""
    registry = require("docker-registry")
    storage = base / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    auth = ""
    if token is not None:
        auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.service}\n"
                f"    issuer: {token.issuer}\n    rootcertbundle: {token.cert_path}\n")
    elif user is not None:
        htpasswd = require("htpasswd")
        subprocess.run([htpasswd, "-B", "-b", "-c", str(base / "htpasswd"), user, password or ""],
                       check=True, capture_output=True)
        auth = f"auth:\n  htpasswd:\n    realm: pbuild-test\n    path: {base / 'htpasswd'}\n"
    conf = base / "registry.yml"

    def prepare(port: int) -> list[str]:
        conf.write_text(_REGISTRY_CONF.format(storage=storage, port=port, auth=auth))
        return [registry, "serve", str(conf)]

    with _started(prepare, base / "registry.log") as port:
        yield Registry(port=port, storage=storage, user=user, password=password)


@dataclass(frozen=True)
class TokenServer:
    """A Bearer-token endpoint (the Docker token protocol) for :func:`docker_registry`."""

    realm: str
    cert_path: Path
    service: str
    issuer: str
    requests: list[str]  # the query strings it was asked, for assertions


@contextlib.contextmanager
def token_server(base: Path, *, user: str, password: str) -> Iterator[TokenServer]:
    """Issue RS256 JWTs, signed by a self-signed certificate, to ``user``/``password`` only.

    The registry trusts the certificate (``rootcertbundle``) and finds it in each token's
    ``x5c`` header. Tokens grant exactly the scopes asked for.
    """
    import base64
    import datetime
    import http.server
    import json
    import urllib.parse

    jwt = pytest.importorskip("jwt")
    crypto_x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    base.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = crypto_x509.Name([crypto_x509.NameAttribute(NameOID.COMMON_NAME, "pbuild-test-token-issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (crypto_x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(crypto_x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(crypto_x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = base / "token-cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    service, issuer = "pbuild-test-registry", "pbuild-test-issuer"
    asked: list[str] = []
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            url = urllib.parse.urlsplit(self.path)
            asked.append(url.query)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            access = []
            for scope in urllib.parse.parse_qs(url.query).get("scope", []):
                kind, repo, actions = scope.split(":")
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
            stamp = int(time.time())
            claims = {"iss": issuer, "sub": user, "aud": service, "exp": stamp + 300, "nbf": stamp - 10,
                      "iat": stamp, "jti": f"{stamp}-{len(asked)}", "access": access}
            token = jwt.encode(claims, pem_key, algorithm="RS256", headers={"x5c": [x5c]})
            body = json.dumps({"token": token, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TokenServer(realm=f"http://127.0.0.1:{server.server_address[1]}/token", cert_path=cert_path,
                          service=service, issuer=issuer, requests=asked)
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Proxy:
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def nginx_proxy(base: Path, upstream_port: int, *, max_body: str) -> Iterator[Proxy]:
    """nginx in front of another local server, refusing request bodies above ``max_body``.

    This is how registries are usually deployed, and how a registry refuses a blob that is too
    large (413).
    """
    nginx = require("nginx")
    conf_dir = base / "proxy"
    (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
    user_line = "user root;" if os.geteuid() == 0 else ""
    conf = conf_dir / "nginx.conf"

    def prepare(port: int) -> list[str]:
        conf.write_text(f"""
daemon off;
{user_line}
worker_processes 1;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {conf_dir}/tmp/body;
    proxy_temp_path {conf_dir}/tmp/proxy;
    fastcgi_temp_path {conf_dir}/tmp/fastcgi;
    uwsgi_temp_path {conf_dir}/tmp/uwsgi;
    scgi_temp_path {conf_dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {max_body};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
        }}
    }}
}}
""")
        return [nginx, "-p", str(conf_dir), "-c", str(conf)]

    with _started(prepare, conf_dir / "out.log") as port:
        yield Proxy(port=port)


# ---------------------------------------------------------------------------------------------
# Misbehaving servers


@dataclass(frozen=True)
class SocketServer:
    port: int

    def url(self, scheme: str = "http", prefix: str = "cache") -> str:
        suffix = f"/{prefix}" if scheme.startswith("http") else ""
        return f"{scheme}://127.0.0.1:{self.port}{suffix}"


@contextlib.contextmanager
def _socket_server(handle: object) -> Iterator[SocketServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SocketServer(port=int(listener.getsockname()[1]))
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def silent_server() -> Iterator[SocketServer]:
    """Accepts connections and never answers: every request times out."""

    def hold(conn: socket.socket) -> None:
        # Read and discard so the client's send never blocks; never write anything back.
        conn.settimeout(30)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    with _socket_server(hold) as server:
        yield server


@contextlib.contextmanager
def truncating_http_server(body: bytes, *, announced: int | None = None) -> Iterator[SocketServer]:
    """Answers every GET with ``200`` announcing ``announced`` bytes (default ``len(body)*2``),
    sends ``body`` and closes the connection: a download cut off in the middle."""
    length = announced if announced is not None else 2 * len(body)

    def answer(conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\n\r\n"
            conn.sendall(head.encode() + body)
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    with _socket_server(answer) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# A tiny OCI image layout to push


@dataclass(frozen=True)
class Layout:
    path: Path
    manifest_digest: str
    layer_digests: tuple[str, ...]
    config_digest: str


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar holding ``files``; returns it and its diff_id."""
    import gzip
    import hashlib
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def make_oci_layout(path: Path, layers: list[dict[str, bytes]], *, as_index: bool = False) -> Layout:
    """Write an OCI image layout with one image made of ``layers`` (each: file name -> bytes).

    With ``as_index``, ``index.json`` names an image index (linux/amd64 -> the image) instead of
    the image manifest; ``Layout.manifest_digest`` is then the index's digest.
    """
    import hashlib
    import json

    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_descs = []
    diff_ids = []
    for files in layers:
        data, diff_id = _layer(files)
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(data)})
        diff_ids.append(diff_id)
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **put(json.dumps(config, sort_keys=True).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layer_descs}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **put(json.dumps(manifest, sort_keys=True).encode())}
    if as_index:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{**manifest_desc, "platform": {"os": "linux", "architecture": "amd64"}}]}
        manifest_desc = {"mediaType": "application/vnd.oci.image.index.v1+json",
                         **put(json.dumps(index, sort_keys=True).encode())}
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    return Layout(path, str(manifest_desc["digest"]), tuple(str(d["digest"]) for d in layer_descs),
                  str(config_desc["digest"]))
