"""Remote-cache settings: command-line flags over ``WORKSPACE.toml`` over the user config file.

Both files use the same ``[remote]`` table::

    [remote]
    url = "grpc://cache.example:8980"   # or http(s)://HOST[:PORT]/PREFIX
    instance-name = "main"
    upload = false                      # read-only: pull requests, laptops
    timeout = 30                        # seconds per request
    retries = 3
    headers = { "X-Team" = "build" }
    executor = "grpc://grid.example:50051"  # REAPI Execution: actions run on its workers
    local-fallback = true               # an unreachable executor: one warning, run here

With an ``executor`` and no ``url`` the executor's endpoint is the cache too; a ``url`` (or
``--remote-cache``) keeps another cache. The instance name, headers, credentials and timeout
apply to both.

Credentials belong in the URL's userinfo, in ``--remote-header Authorization=...`` or in the
``PBUILD_REMOTE_CREDENTIALS`` environment variable, never in a committed WORKSPACE.toml.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from pbuild.engine.errors import WorkspaceError
from pbuild.engine.remote import RemoteSettings

_KEYS = ("url", "instance-name", "upload", "timeout", "retries", "headers", "executor", "local-fallback")
_SCHEMES = ("http", "https", "grpc", "grpcs")
_EXEC_SCHEMES = ("grpc", "grpcs")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote cache and execution")
    group.add_argument("--remote-cache", metavar="URL", default=None,
                       help="remote cache: http(s)://HOST[:PORT]/PREFIX (Bazel's HTTP protocol) or "
                            "grpc(s)://HOST:PORT (REAPI v2); overrides [remote] url")
    group.add_argument("--remote-instance-name", metavar="NAME", default=None,
                       help="REAPI instance name (gRPC only)")
    group.add_argument("--remote-upload", action=argparse.BooleanOptionalAction, default=None,
                       help="upload local results to the remote cache (default: on); "
                            "--no-remote-upload reads only, e.g. for pull-request builds")
    group.add_argument("--remote-header", metavar="NAME=VALUE", type=_header, action="append", default=None,
                       help="extra header sent with every request (repeatable), e.g. Authorization=Bearer ...")
    group.add_argument("--remote-timeout", metavar="SECONDS", type=_seconds, default=None,
                       help="time limit per remote request (default: 60)")
    group.add_argument("--remote-executor", metavar="URL", default=None,
                       help="run actions on a REAPI Execution service, grpc(s)://HOST:PORT (BuildGrid, "
                            "Buildbarn, ...); it is the cache too unless --remote-cache names another; "
                            "overrides [remote] executor")
    group.add_argument("--remote-local-fallback", action=argparse.BooleanOptionalAction, default=None,
                       help="when the executor cannot be reached, warn once and run actions here "
                            "(default: off: the build fails)")


def _table(config: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    table = config.get("remote", {})
    if not isinstance(table, Mapping):
        raise WorkspaceError(f"{where}: [remote] must be a table", hint="write it as a [remote] section")
    unknown = sorted(set(table) - set(_KEYS) - {"instance_name", "local_fallback"})
    if unknown:
        raise WorkspaceError(f"{where}: unknown [remote] key(s) {', '.join(unknown)}",
                             hint=f"the keys are: {', '.join(_KEYS)}")
    return table


def _check(where: str, key: str, value: Any, kind: type | tuple[type, ...], expected: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, not to a user writing `timeout = true`.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise WorkspaceError(f"{where}: [remote] {key}: expected {expected}, got {value!r}")
    return value


def _check_url(url: str, where: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise WorkspaceError(f"{where}: remote cache URL {url!r} is not usable",
                             hint="use http(s)://HOST[:PORT]/PREFIX or grpc(s)://HOST:PORT")
    try:
        _ = parts.port
    except ValueError:
        raise WorkspaceError(f"{where}: remote cache URL {url!r} has a bad port") from None
    return url


def _check_executor(url: str, where: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        raise WorkspaceError(f"{where}: remote executor {url!r} is HTTP, but REAPI execution is gRPC only",
                             hint="use grpc(s)://HOST:PORT (an HTTP cache can still be --remote-cache)")
    if parts.scheme not in _EXEC_SCHEMES or not parts.hostname:
        raise WorkspaceError(f"{where}: remote executor {url!r} is not usable", hint="use grpc(s)://HOST:PORT")
    try:
        _ = parts.port
    except ValueError:
        raise WorkspaceError(f"{where}: remote executor {url!r} has a bad port") from None
    if parts.path not in ("", "/"):
        raise WorkspaceError(f"{where}: remote executor {url!r} has a path",
                             hint="name the instance with --remote-instance-name (or [remote] instance-name)")
    return url


def resolve(args: argparse.Namespace, workspace_config: Mapping[str, Any],
            user_config: Mapping[str, Any]) -> RemoteSettings:
    url: str | None = None
    instance = ""
    upload = True
    timeout = 60.0
    retries = 3
    headers: dict[str, tuple[str, str]] = {}  # lower-cased name -> (name, value)
    executor: str | None = None
    fallback = False

    for config, where in ((user_config, "user config"), (workspace_config, "WORKSPACE.toml")):
        table = _table(config, where)
        if "url" in table:
            url = _check_url(_check(where, "url", table["url"], str, "a URL string"), where) or None
        for key in ("instance-name", "instance_name"):
            if key in table:
                instance = _check(where, key, table[key], str, "a string")
        if "upload" in table:
            upload = _check(where, "upload", table["upload"], bool, "true or false")
        if "timeout" in table:
            value = _check(where, "timeout", table["timeout"], (int, float), "a number of seconds")
            if value <= 0:
                raise WorkspaceError(f"{where}: [remote] timeout must be positive, got {value}")
            timeout = float(value)
        if "retries" in table:
            retries = _check(where, "retries", table["retries"], int, "an integer")
            if retries < 0:
                raise WorkspaceError(f"{where}: [remote] retries must be 0 or more, got {retries}")
        if "headers" in table:
            table_headers = _check(where, "headers", table["headers"], Mapping, "a table of NAME = \"VALUE\"")
            for name, value in table_headers.items():
                _check(where, f"headers.{name}", value, str, "a string")
                headers[name.lower()] = (name, value)
        if "executor" in table:
            value = _check(where, "executor", table["executor"], str, "a grpc(s)://HOST:PORT string")
            executor = _check_executor(value, where) if value else None
        for key in ("local-fallback", "local_fallback"):
            if key in table:
                fallback = _check(where, key, table[key], bool, "true or false")

    url_named = url is not None
    flag = getattr(args, "remote_cache", None)
    if flag is not None:
        url_named = True
        url = _check_url(flag, "--remote-cache") if flag else None  # --remote-cache= turns it off
    if getattr(args, "remote_instance_name", None) is not None:
        instance = args.remote_instance_name
    if getattr(args, "remote_upload", None) is not None:
        upload = bool(args.remote_upload)
    if getattr(args, "remote_timeout", None) is not None:
        timeout = float(args.remote_timeout)
    for name, value in getattr(args, "remote_header", None) or ():
        headers[name.lower()] = (name, value)
    flag = getattr(args, "remote_executor", None)
    if flag is not None:
        executor = _check_executor(flag, "--remote-executor") if flag else None  # = turns it off
    if getattr(args, "remote_local_fallback", None) is not None:
        fallback = bool(args.remote_local_fallback)
    if executor is not None and not url_named:
        url = executor  # the Execution service's endpoint serves its CAS and action cache too

    return RemoteSettings(url=url, instance_name=instance, upload=upload, headers=tuple(headers.values()),
                          timeout_s=timeout, retries=retries, executor=executor, local_fallback=fallback)
