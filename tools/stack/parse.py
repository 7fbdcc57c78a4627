"""Compose's service keys (the supported subset) -> ``ServiceSpec``, shared by the ``stack`` rule
and Compose files, so a service means the same written in either.

The front ends differ only in where they are: each gives :func:`parse_service` the service's raw
table (from TOML or YAML), its image already decided, how to read an ``env_file`` and where
relative bind sources start; a :class:`FieldError` names the key path inside the service, which
the front end turns into ``file:line``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from pbuild.lib.errors import EXIT_BAD_INPUT
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.spec import (
    CONDITIONS,
    RESTART_POLICIES,
    Dependency,
    DependsCondition,
    Healthcheck,
    PortSpec,
    RestartPolicy,
    ServiceSpec,
    VolumeSpec,
    service_name_problem,
    volume_name_problem,
)

# Each supported key of a service and what it means; the rule's documentation and every
# "unknown key" message come from here.
SERVICE_KEYS: dict[str, str] = {
    "image": "The image: the label of an `image` or `oci_pull` target (in a Compose file also a "
             "registry reference).",
    "command": "Replaces the image's Cmd: a list of arguments, or a string split as a shell would.",
    "entrypoint": "Replaces the image's Entrypoint: a list, or a string split as a shell would.",
    "environment": "Variables: a table NAME = VALUE, or a list of \"NAME=VALUE\"; they win over `env_file`.",
    "env_file": "A file of NAME=VALUE lines (or a list of them), relative to the package (the Compose "
                "file's folder); read at analysis, so editing it recreates the service.",
    "ports": "Published ports, \"[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]\" (HOST_IP defaults to "
             "127.0.0.1), or tables {target, published, host_ip, protocol}.",
    "volumes": "\"./PATH:TARGET[:ro]\" binds a folder relative to the package (inside the workspace); "
               "\"NAME:TARGET[:ro]\" a named volume, kept until `pbuild down -v`.",
    "depends_on": "Services started first: a list of names (started), or a table NAME = { condition = "
                  "\"service_started\" | \"service_healthy\" | \"service_completed_successfully\" }.",
    "healthcheck": "{ test, interval, timeout, retries, start_period, disable }: `test` is an argv list, "
                   "[\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or a shell string; durations as \"1m30s\", "
                   "\"500ms\"; defaults 30s, 30s, 3, 0s.",
    "restart": "\"no\" (default), \"on-failure\", \"always\" or \"unless-stopped\".",
    "working_dir": "The working directory inside the container (absolute).",
    "user": "USER[:GROUP] (names or numbers) the service runs as.",
    "outbound": "pbuild's own key: true lets the service reach beyond the stack (off by default).",
}
HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period", "disable")
PORT_KEYS = ("target", "published", "host_ip", "protocol")
DEFAULT_HOST_IP = "127.0.0.1"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

ReadEnvFile = Callable[[str], str]


class FieldError(StackError):
    """A bad value in one service: ``path`` is the key path inside the service (``("ports",)``,
    ``("healthcheck", "interval")``), so the front end can say the file and line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: tuple[str, ...], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


def supported(keys: Mapping[str, str] | tuple[str, ...]) -> str:
    return ", ".join(sorted(keys))


def parse_duration(text: Any, *, path: tuple[str, ...] = ()) -> float:
    """Seconds of a Compose duration: ``"1s"``, ``"500ms"``, ``"1m30s"``, ``"1.5h"`` (units us, ms,
    s, m, h; Go's notation). Written by hand: the standard library reads no such notation, and
    it is one regular expression."""
    hint = 'write a duration such as "1s", "500ms" or "1m30s"'
    if not isinstance(text, str):
        raise FieldError(f"{text!r} is not a duration", path=path, hint=hint)
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise FieldError(f"{text!r} is not a duration", path=path, hint=hint)
    return total


def parse_port(raw: Any, *, path: tuple[str, ...] = ("ports",)) -> PortSpec:
    """One published port: ``"[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"`` or Compose's long
    form ``{target, published, host_ip, protocol}``."""
    hint = 'write "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]", e.g. "127.0.0.1:8080:80"'
    if isinstance(raw, int) and not isinstance(raw, bool):
        raise FieldError(f"port {raw!r} names no host port", path=path,
                         hint="pbuild publishes on a port you choose: " + hint)
    if isinstance(raw, Mapping):
        unknown = sorted(set(map(str, raw)) - set(PORT_KEYS))
        if unknown:
            raise FieldError(f"unknown port key {unknown[0]!r}", path=path, hint=f"a port table has: {supported(PORT_KEYS)}")
        if "published" not in raw or "target" not in raw:
            raise FieldError("a port table needs target and published", path=path,
                             hint="pbuild publishes on a port you choose: add published = HOST_PORT")
        host_ip = raw.get("host_ip", DEFAULT_HOST_IP)
        protocol = raw.get("protocol", "tcp")
        host_port, container_port = raw["published"], raw["target"]
    elif isinstance(raw, str):
        text, protocol = raw, "tcp"
        if "/" in text:
            text, protocol = text.rsplit("/", 1)
        host_ip = DEFAULT_HOST_IP
        if text.startswith("["):  # [IPv6]:HOST:CONTAINER
            close = text.find("]")
            if close < 0 or text[close + 1:close + 2] != ":":
                raise FieldError(f"port {raw!r} is not valid", path=path, hint=hint)
            host_ip, text = text[1:close], text[close + 2:]
            parts = text.split(":")
        else:
            parts = text.split(":")
            if len(parts) == 3:
                host_ip = parts.pop(0)
        if len(parts) == 1:
            raise FieldError(f"port {raw!r} names no host port", path=path,
                             hint="pbuild publishes on a port you choose: " + hint)
        if len(parts) != 2:
            raise FieldError(f"port {raw!r} is not valid", path=path, hint=hint)
        host_port, container_port = parts
    else:
        raise FieldError(f"port {raw!r} is not valid", path=path, hint=hint)
    if protocol not in ("tcp", "udp"):
        raise FieldError(f"port {raw!r}: protocol {protocol!r} is neither tcp nor udp", path=path, hint=hint)
    if not isinstance(host_ip, str):
        raise FieldError(f"port {raw!r}: host_ip must be a string", path=path, hint=hint)
    try:
        ipaddress.ip_address(host_ip)
    except ValueError:
        raise FieldError(f"port {raw!r}: {host_ip!r} is not an IP address", path=path, hint=hint) from None
    numbers = []
    for value in (host_port, container_port):
        number = value if isinstance(value, int) and not isinstance(value, bool) else \
            int(value) if isinstance(value, str) and value.isdigit() else None
        if number is None or not 1 <= number <= 65535:
            raise FieldError(f"port {raw!r}: {value!r} is not a port number (1-65535)", path=path,
                             hint="ranges are not supported; publish each port on its own" if "-" in str(value) else hint)
        numbers.append(number)
    return PortSpec(host_ip, numbers[0], numbers[1], "udp" if protocol == "udp" else "tcp")


def parse_volume(raw: Any, *, base: str, allow_absolute: bool, path: tuple[str, ...] = ("volumes",)) -> VolumeSpec:
    """``SOURCE:TARGET[:ro|rw]``. A source starting with ``.`` or ``/`` is a bind: a relative one
    is joined onto ``base`` (a relative folder, "" for the root it is relative to) and must stay
    below that root; an absolute one only with ``allow_absolute``. Anything else names a volume."""
    hint = 'write "./PATH:/TARGET[:ro]" (a folder of the package) or "NAME:/TARGET[:ro]" (a named volume)'
    if not isinstance(raw, str):
        raise FieldError(f"volume {raw!r} is not a string", path=path, hint=hint)
    parts = raw.split(":")
    read_only = False
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise FieldError(f"volume {raw!r}: mode {mode!r} is neither ro nor rw", path=path, hint=hint)
        read_only = mode == "ro"
    if len(parts) != 2 or not parts[0]:
        raise FieldError(f"volume {raw!r} is not SOURCE:TARGET", path=path,
                         hint="anonymous volumes are not supported: " + hint)
    source, target = parts
    if not target.startswith("/") or ".." in target.split("/") or posixpath.normpath(target) == "/":
        raise FieldError(f"volume {raw!r}: target {target!r} must be an absolute path (not / and without '..')",
                         path=path, hint=hint)
    target = posixpath.normpath(target)
    if source.startswith("/"):
        if not allow_absolute:
            raise FieldError(f"volume {raw!r}: {source!r} is absolute", path=path,
                             hint="bind folders of the workspace with a path relative to the package: " + hint)
        return VolumeSpec("bind", posixpath.normpath(source), target, read_only)
    if source.startswith(".") or source.startswith("~"):
        if source.startswith("~"):
            raise FieldError(f"volume {raw!r}: '~' is not expanded", path=path, hint=hint)
        joined = posixpath.normpath(posixpath.join(base, source))
        if joined == ".." or joined.startswith("../"):
            raise FieldError(f"volume {raw!r}: {source!r} leads outside the "
                             + ("workspace" if not allow_absolute else "Compose file's folder"), path=path,
                             hint="bind folders inside it" + ("" if not allow_absolute else ", or write an absolute path"))
        return VolumeSpec("bind", joined, target, read_only)
    problem = volume_name_problem(source)
    if problem:
        raise FieldError(f"volume {raw!r}: {problem}", path=path, hint=hint)
    return VolumeSpec("volume", source, target, read_only)


def parse_env_lines(text: str, *, path: tuple[str, ...] = ("env_file",), where: str = "env_file") -> list[tuple[str, str]]:
    """The NAME=VALUE lines of an env file, as Compose reads them: blank lines and ``#`` comments
    skipped, an optional ``export``, values in single quotes kept as written, in double quotes
    with ``\\n``, ``\\"`` and ``\\\\`` escapes, unquoted ones up to a `` #`` comment.

    Written by hand: python-dotenv would substitute ``${VAR}`` from the host's environment,
    which must not leak into a service's record; the format is a few lines."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        name, eq, value = stripped.partition("=")
        name = name.strip()
        if not eq or not _ENV_NAME.fullmatch(name):
            raise FieldError(f"{where}, line {number}: expected NAME=VALUE, got {line.strip()!r}", path=path,
                             hint="one variable per line, NAME=VALUE; # starts a comment")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\([n"\\])', lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        pairs.append((name, value))
    return pairs


def _argv(raw: Any, key: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            return tuple(shlex.split(raw))
        except ValueError as exc:
            raise FieldError(f"{raw!r} cannot be split into arguments: {exc}", path=(key,),
                             hint="close the quotes, or write a list of arguments") from None
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise FieldError(f"must be a string or a list of strings, got {raw!r}", path=(key,),
                     hint='write ["program", "arg", ...]')


def _environment(raw: Any) -> list[tuple[str, str]]:
    hint = 'write a table { NAME = "VALUE" } or a list ["NAME=VALUE"]'
    pairs: list[tuple[str, str]] = []
    if isinstance(raw, Mapping):
        for name, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise FieldError(f"{name}: value {value!r} is not a string or number", path=("environment",),
                                 hint='quote it ("true"); a variable without a value (taken from the host) is not '
                                      "supported" if value is None or isinstance(value, bool) else hint)
            pairs.append((str(name), str(value)))
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, str) or "=" not in item:
                raise FieldError(f"{item!r} is not NAME=VALUE", path=("environment",),
                                 hint="a variable without a value (taken from the host) is not supported; " + hint)
            name, _, value = item.partition("=")
            pairs.append((name, value))
    else:
        raise FieldError(f"must be a table or a list, got {raw!r}", path=("environment",), hint=hint)
    for name, value in pairs:
        if not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise FieldError(f"{name!r} is not a variable name (or its value holds NUL)", path=("environment",),
                             hint="names are letters, digits and _, not starting with a digit")
    return pairs


def _env_files(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise FieldError(f"must be a file name or a list of them, got {raw!r}", path=("env_file",),
                     hint='write env_file = "app.env"')


def env_file_path(name: str, *, base: str) -> str:
    """``name`` (as written in ``env_file``) joined onto ``base``; refused when absolute or when it
    leads out of the root ``base`` is relative to."""
    joined = posixpath.normpath(posixpath.join(base, name))
    if name.startswith("/") or joined == ".." or joined.startswith("../") or not name:
        raise FieldError(f"{name!r} must be a file inside the package", path=("env_file",),
                         hint="write a path relative to the package, without leading '/' or '..' out of it")
    return joined


def _depends_on(raw: Any) -> tuple[Dependency, ...]:
    hint = 'write a list ["db"] or a table { db = { condition = "service_healthy" } }'
    if isinstance(raw, list):
        if not all(isinstance(x, str) for x in raw):
            raise FieldError(f"must list service names, got {raw!r}", path=("depends_on",), hint=hint)
        names = list(raw)
        deps = [Dependency(name) for name in names]
    elif isinstance(raw, Mapping):
        deps = []
        for name, value in raw.items():
            if not isinstance(value, Mapping):
                raise FieldError(f"{name}: expected a table with condition, got {value!r}", path=("depends_on", str(name)),
                                 hint=hint)
            unknown = sorted(set(map(str, value)) - {"condition"})
            if unknown:
                raise FieldError(f"{name}: unknown key {unknown[0]!r}", path=("depends_on", str(name)),
                                 hint="a dependency has only: condition")
            condition = value.get("condition", "service_started")
            if condition not in CONDITIONS:
                raise FieldError(f"{name}: unknown condition {condition!r}", path=("depends_on", str(name)),
                                 hint=f"conditions: {', '.join(CONDITIONS)}")
            cond: DependsCondition = condition
            deps.append(Dependency(str(name), cond))
        names = [d.service for d in deps]
    else:
        raise FieldError(f"must be a list or a table, got {raw!r}", path=("depends_on",), hint=hint)
    for name in names:
        problem = service_name_problem(name)
        if problem:
            raise FieldError(f"{name!r} is not a service name: {problem}", path=("depends_on",), hint=hint)
    if len(set(names)) != len(names):
        raise FieldError("names a service twice", path=("depends_on",), hint=hint)
    return tuple(deps)


def _healthcheck(raw: Any) -> Healthcheck | None:
    path = ("healthcheck",)
    if not isinstance(raw, Mapping):
        raise FieldError(f"must be a table, got {raw!r}", path=path, hint=f"a healthcheck has: {supported(HEALTHCHECK_KEYS)}")
    unknown = sorted(set(map(str, raw)) - set(HEALTHCHECK_KEYS))
    if unknown:
        raise FieldError(f"unknown key {unknown[0]!r}", path=(*path, unknown[0]),
                         hint=f"a healthcheck has: {supported(HEALTHCHECK_KEYS)}")
    disable = raw.get("disable", False)
    if not isinstance(disable, bool):
        raise FieldError("disable must be true or false", path=(*path, "disable"))
    if disable:
        return None
    test = raw.get("test")
    hint = 'write test = ["CMD", "prog", "arg"], ["CMD-SHELL", "command"], an argv list, or a shell string'
    if isinstance(test, str):
        argv: tuple[str, ...] = ("/bin/sh", "-c", test)
    elif isinstance(test, list) and test and all(isinstance(x, str) for x in test):
        if test[0] == "NONE":
            return None
        if test[0] == "CMD":
            argv = tuple(test[1:])
        elif test[0] == "CMD-SHELL":
            if len(test) != 2:
                raise FieldError("CMD-SHELL takes one command string", path=(*path, "test"), hint=hint)
            argv = ("/bin/sh", "-c", test[1])
        else:
            argv = tuple(test)  # pbuild reads a plain list as the argv, as CMD would
        if not argv:
            raise FieldError("CMD names no program", path=(*path, "test"), hint=hint)
    else:
        raise FieldError(f"test must be a string or a list of strings, got {test!r}", path=(*path, "test"), hint=hint)
    times = {}
    for key, default in (("interval", 30.0), ("timeout", 30.0), ("start_period", 0.0)):
        times[key] = parse_duration(raw[key], path=(*path, key)) if key in raw else default
        if key != "start_period" and times[key] <= 0:
            raise FieldError(f"{key} must be longer than 0s", path=(*path, key))
    retries = raw.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise FieldError(f"retries must be a whole number of at least 1, got {retries!r}", path=(*path, "retries"))
    return Healthcheck(argv, times["interval"], times["timeout"], retries, times["start_period"])


def _optional_text(raw: Mapping[str, Any], key: str, *, numbers: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise FieldError(f"must be a non-empty string, got {value!r}", path=(key,))
    return value


def parse_service(name: str, raw: Any, *, image: str, image_digest: str = "", base: str,
                  allow_absolute_binds: bool, read_env_file: ReadEnvFile,
                  keys: Mapping[str, str] = SERVICE_KEYS) -> ServiceSpec:
    """One service from its raw table. ``image`` is decided by the caller (a label's layout, or a
    Compose reference), as is ``raw["image"]``'s presence; ``read_env_file`` gets each ``env_file``
    path joined onto ``base`` and returns its text. Unknown keys (not in ``keys``) are refused."""
    problem = service_name_problem(name)
    if problem:
        raise FieldError(f"service name {name!r} is not valid: {problem}", path=())
    if not isinstance(raw, Mapping):
        raise FieldError(f"service {name!r} must be a table, got {raw!r}", path=(), hint=f"a service has: {supported(keys)}")
    unknown = sorted(str(k) for k in raw if k not in keys)
    if unknown:
        raise FieldError(f"unknown key {unknown[0]!r} in service {name!r}", path=(unknown[0],),
                         hint=f"a service has: {supported(keys)}")
    environment: dict[str, str] = {}
    if "env_file" in raw:
        for file_name in _env_files(raw["env_file"]):
            rel = env_file_path(file_name, base=base)
            environment.update(parse_env_lines(read_env_file(rel), where=file_name))
    if "environment" in raw:
        environment.update(_environment(raw["environment"]))
    restart = raw.get("restart", "no")
    if restart not in RESTART_POLICIES:
        raise FieldError(f"unknown restart policy {restart!r}", path=("restart",),
                         hint=f"restart is one of: {', '.join(RESTART_POLICIES)}")
    policy: RestartPolicy = restart
    ports = raw.get("ports", [])
    volumes = raw.get("volumes", [])
    for key, value in (("ports", ports), ("volumes", volumes)):
        if not isinstance(value, list):
            raise FieldError(f"must be a list, got {value!r}", path=(key,))
    working_dir = _optional_text(raw, "working_dir")
    if working_dir is not None and not working_dir.startswith("/"):
        raise FieldError(f"{working_dir!r} is not an absolute path", path=("working_dir",), hint='write "/srv/app"')
    outbound = raw.get("outbound", False)
    if not isinstance(outbound, bool):
        raise FieldError(f"must be true or false, got {outbound!r}", path=("outbound",))
    mounts = tuple(parse_volume(v, base=base, allow_absolute=allow_absolute_binds) for v in volumes)
    targets = [m.target for m in mounts]
    for target in targets:
        if targets.count(target) > 1:
            raise FieldError(f"two volumes are mounted at {target}", path=("volumes",), hint="mount one volume per target")
    return ServiceSpec(
        name=name,
        image=image,
        image_digest=image_digest,
        command=_argv(raw.get("command"), "command"),
        entrypoint=_argv(raw.get("entrypoint"), "entrypoint"),
        environment=tuple(sorted(environment.items())),
        ports=tuple(parse_port(p) for p in ports),
        volumes=mounts,
        depends_on=_depends_on(raw["depends_on"]) if "depends_on" in raw else (),
        healthcheck=_healthcheck(raw["healthcheck"]) if "healthcheck" in raw else None,
        restart=policy,
        working_dir=working_dir,
        user=_optional_text(raw, "user", numbers=True),
        outbound=outbound,
    )
