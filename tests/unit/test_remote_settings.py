"""Remote settings: flags over WORKSPACE.toml over the user config, and bad values as messages."""

from __future__ import annotations

import argparse

import pytest
from pbuild.engine.errors import WorkspaceError
from pbuild.engine.remote import RemoteSettings, add_remote_flags, resolve_remote_settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pbuild build")
    add_remote_flags(parser)
    return parser.parse_args(list(argv))


def test_defaults_mean_no_remote() -> None:
    assert resolve_remote_settings(_args(), {}, {}) == RemoteSettings(url=None)


def test_flags_win_over_workspace_over_user_config() -> None:
    user = {"remote": {"url": "http://user.example/cache", "timeout": 5, "retries": 1,
                       "headers": {"X-Team": "user", "X-User": "me"}}}
    workspace = {"remote": {"url": "grpc://ws.example:8980", "instance-name": "main", "upload": False,
                            "headers": {"x-team": "workspace"}}}
    merged = resolve_remote_settings(_args(), workspace, user)
    assert merged == RemoteSettings(url="grpc://ws.example:8980", instance_name="main", upload=False,
                                    headers=(("x-team", "workspace"), ("X-User", "me")), timeout_s=5.0, retries=1)

    flags = _args("--remote-cache", "https://flag.example/c", "--remote-instance-name", "pr",
                  "--remote-upload", "--remote-header", "X-Team=flag", "--remote-header",
                  "Authorization=Bearer t=k", "--remote-timeout", "2.5")
    merged = resolve_remote_settings(flags, workspace, user)
    assert merged.url == "https://flag.example/c" and merged.instance_name == "pr" and merged.upload
    assert dict(merged.headers) == {"X-Team": "flag", "X-User": "me", "Authorization": "Bearer t=k"}
    assert merged.timeout_s == 2.5

    assert not resolve_remote_settings(_args("--no-remote-upload"), {}, {"remote": {"upload": True}}).upload
    # An empty --remote-cache turns a configured remote off for one build.
    assert resolve_remote_settings(_args("--remote-cache="), workspace, user).url is None


@pytest.mark.parametrize(("table", "message"), [
    ({"url": "ftp://x"}, "not usable"),
    ({"url": "http://host:99999/x"}, "bad port"),
    ({"upload": "yes"}, "expected true or false"),
    ({"timeout": True}, "expected a number of seconds"),
    ({"timeout": -1}, "must be positive"),
    ({"retries": -2}, "must be 0 or more"),
    ({"headers": {"X": 1}}, "expected a string"),
    ({"cache": "http://x"}, "unknown [remote] key"),
])
def test_bad_workspace_values_are_reported(table: dict[str, object], message: str) -> None:
    with pytest.raises(WorkspaceError) as info:
        resolve_remote_settings(_args(), {"remote": table}, {})
    assert message in info.value.message and "WORKSPACE.toml" in info.value.message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("argv", [["--remote-header", "novalue"], ["--remote-timeout", "0"],
                                  ["--remote-timeout", "soon"]])
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_executor_is_the_cache_unless_another_is_named() -> None:
    merged = resolve_remote_settings(_args("--remote-executor", "grpc://grid.example:50051",
                                           "--remote-instance-name", "main", "--remote-header", "X-Team=b",
                                           "--remote-timeout", "7"), {}, {})
    assert merged == RemoteSettings(url="grpc://grid.example:50051", instance_name="main",
                                    headers=(("X-Team", "b"),), timeout_s=7.0,
                                    executor="grpc://grid.example:50051", local_fallback=False)
    other = resolve_remote_settings(_args("--remote-executor", "grpcs://grid.example:443",
                                          "--remote-cache", "http://cache.example/c"), {}, {})
    assert other.url == "http://cache.example/c" and other.executor == "grpcs://grid.example:443"
    # A cache named in the workspace is kept too; an empty --remote-cache means no cache lookups.
    workspace = {"remote": {"url": "grpc://cache.example:8980", "executor": "grpc://grid.example:1",
                            "local-fallback": True}}
    merged = resolve_remote_settings(_args(), workspace, {})
    assert merged.url == "grpc://cache.example:8980" and merged.executor == "grpc://grid.example:1"
    assert merged.local_fallback
    assert resolve_remote_settings(_args("--remote-cache="), workspace, {}).url is None
    assert resolve_remote_settings(_args("--remote-cache="), workspace, {}).executor == "grpc://grid.example:1"


def test_executor_and_fallback_flags_win_over_the_files() -> None:
    user = {"remote": {"executor": "grpc://user.example:1", "local_fallback": False}}
    workspace = {"remote": {"executor": "grpc://ws.example:2"}}
    assert resolve_remote_settings(_args(), workspace, user).executor == "grpc://ws.example:2"
    merged = resolve_remote_settings(_args("--remote-executor", "grpc://flag.example:3",
                                           "--remote-local-fallback"), workspace, user)
    assert merged.executor == "grpc://flag.example:3" and merged.url == "grpc://flag.example:3"
    assert merged.local_fallback
    assert not resolve_remote_settings(_args("--no-remote-local-fallback"), {},
                                       {"remote": {"local-fallback": True}}).local_fallback
    # --remote-executor= runs actions here for one build, and the executor is then no cache.
    off = resolve_remote_settings(_args("--remote-executor="), workspace, user)
    assert off.executor is None and off.url is None


@pytest.mark.parametrize(("value", "message"), [
    ("http://grid.example:8080", "REAPI execution is gRPC only"),
    ("https://grid.example", "REAPI execution is gRPC only"),
    ("unix:///run/grid.sock", "not usable"),
    ("grpc://", "not usable"),
    ("grpc://grid.example:70000", "bad port"),
    ("grpc://grid.example:1/main", "has a path"),
])
def test_bad_executors_are_refused(value: str, message: str) -> None:
    with pytest.raises(WorkspaceError) as info:
        resolve_remote_settings(_args(), {"remote": {"executor": value}}, {})
    assert message in info.value.message and "WORKSPACE.toml" in info.value.message
    with pytest.raises(WorkspaceError) as info:
        resolve_remote_settings(_args("--remote-executor", value), {}, {})
    assert message in info.value.message and "--remote-executor" in info.value.message


@pytest.mark.parametrize(("table", "message"), [
    ({"executor": 5}, "expected a grpc(s)://HOST:PORT string"),
    ({"local-fallback": "yes"}, "expected true or false"),
])
def test_bad_executor_values_are_reported(table: dict[str, object], message: str) -> None:
    with pytest.raises(WorkspaceError) as info:
        resolve_remote_settings(_args(), {"remote": table}, {})
    assert message in info.value.message
