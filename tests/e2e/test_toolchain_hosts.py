"""Toolchains make outputs and keys independent of the host.

- The same ``//app:image`` digest whether pbuild runs on this Python or on another minor version.
- A remote cache filled on one host serves a second host with another ``/etc/os-release``, no
  ``/usr/bin/python3.11`` and pbuild on another Python: nothing executes there, neither the
  image's actions nor ``//app:program_test``; and that host runs the test and the program itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.otherpython import OtherPythonRunner, find_other_python, make_venv
from tests.support.peers import Nginx, nginx_cache
from tests.support.runner import Runner

pytestmark = pytest.mark.slow

_BUILD_TIMEOUT = 900


@pytest.fixture(scope="session")
def other_python_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    python = find_other_python()
    assert python, "these tests need a second CPython (pyenv's 3.12, 3.13 or 3.10); .ci/install provides one"
    return make_venv(python, tmp_path_factory.mktemp("other-python"))


@pytest.fixture
def other_pbuild(tmp_path: Path, other_python_env: tuple[Path, Path]) -> OtherPythonRunner:
    return OtherPythonRunner(tmp_path, *other_python_env)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with nginx_cache(tmp_path / "nginx") as server:
        yield server


def _executed(events: Path) -> list[str]:
    """``label mnemonic`` of every action the build behind ``events`` (--build-event-json) executed."""
    records = [json.loads(line) for line in events.read_text().splitlines()]
    return [f"{r['label']} {r['mnemonic']}" for r in records if r.get("status") == "executed"]


def test_the_python_running_pbuild_changes_no_image_byte(tmp_path: Path, pbuild: Runner,
                                                         other_pbuild: OtherPythonRunner) -> None:
    mine = clone_app_workspace(tmp_path / "on-this-python")
    other = clone_app_workspace(tmp_path / "on-another-python")
    a = pbuild("build", "//app:image", cwd=mine, cache=tmp_path / "cache-a", timeout=_BUILD_TIMEOUT)
    assert a.code == 0, a
    b = other_pbuild("build", "//app:image", cwd=other, cache=tmp_path / "cache-b", timeout=_BUILD_TIMEOUT)
    assert b.code == 0, b
    assert "executed" in b.summary  # built from nothing, not served by a cache
    digest = (mine / "pbuild-out/app/image/digest").read_text()
    assert digest.startswith("sha256:")
    assert (other / "pbuild-out/app/image/digest").read_text() == digest


def _second_host(tmp_path: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """A command prefix and environment that make this machine look like another host: another
    distribution in /etc/os-release, no /usr/bin/python3.11, no pyenv on PATH."""
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Other Linux 7"\nID=otherlinux\nVERSION_ID="7"\n')
    script = ('mount --bind "$0" /etc/os-release && mount --bind /dev/null /usr/bin/python3.11 && exec "$@"')
    unshare = ("unshare", "--mount") if os.geteuid() == 0 else ("unshare", "--map-root-user", "--mount")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return (*unshare, "sh", "-c", script, str(os_release)), env


def test_a_remote_cache_filled_on_one_host_serves_another(tmp_path: Path, pbuild: Runner, nginx: Nginx,
                                                          other_pbuild: OtherPythonRunner) -> None:
    remote = ("--remote-cache", nginx.url())
    first = clone_app_workspace(tmp_path / "host-one")
    a = pbuild("build", *remote, "//app:image", cwd=first, cache=tmp_path / "cache-one", timeout=_BUILD_TIMEOUT)
    assert a.code == 0, a
    t = pbuild("test", *remote, "//app:program_test", cwd=first, cache=tmp_path / "cache-one",
               timeout=_BUILD_TIMEOUT)
    assert t.code == 0, t

    prefix, env = _second_host(tmp_path)
    probe = other_pbuild("version", cwd=first, prefix=prefix, env=env)
    assert probe.code == 0, probe
    second = clone_app_workspace(tmp_path / "host-two")
    events = tmp_path / "events-build.json"
    b = other_pbuild("build", *remote, "--build-event-json", str(events), "//app:image", cwd=second,
                     cache=tmp_path / "cache-two", prefix=prefix, env=env, timeout=_BUILD_TIMEOUT)
    assert b.code == 0, b
    assert _executed(events) == [] and "remote cached" in b.summary, b
    assert (second / "pbuild-out/app/image/digest").read_text() == (first / "pbuild-out/app/image/digest").read_text()
    events = tmp_path / "events-test.json"
    u = other_pbuild("test", *remote, "--build-event-json", str(events), "//app:program_test", cwd=second,
                     cache=tmp_path / "cache-two", prefix=prefix, env=env, timeout=_BUILD_TIMEOUT)
    assert u.code == 0, u
    assert "PASSED" in u.out
    assert _executed(events) == [], u

    # And the second host runs them itself, without a Python of its own: the lecture's "No Python
    # interpreter installed" is gone from pbuild's own test and run paths.
    v = other_pbuild("test", "--no-cache-test-results", "//app:program_test", cwd=second,
                     cache=tmp_path / "cache-two", prefix=prefix, env=env, timeout=_BUILD_TIMEOUT)
    assert v.code == 0 and "PASSED" in v.out and "(cached)" not in v.out, v
    w = other_pbuild("run", "//app:program", cwd=second, cache=tmp_path / "cache-two", prefix=prefix, env=env,
                     timeout=_BUILD_TIMEOUT)
    assert w.code == 0 and w.out == "18\n", w
