"""`pbuild run [OPTIONS] TARGET|IMAGE [COMMAND] [ARG...]` and `pbuild exec [OPTIONS] CONTAINER
COMMAND` end to end: real builds, real containers, the real CLI; the image-from-disk runs as root
and as uid 65534."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.launcher import kill_leftovers
from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.runner import PBUILD, Result, Runner
from tests.support.testimages import BASE_CONFIG, make_busybox_image

PRINT_FOO = 'import os; print(os.environ["FOO"])'


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Runner]:
    """A clone of the repo's //app workspace with //app:image built, and its runner."""
    tmp = tmp_path_factory.mktemp("app")
    ws = clone_app_workspace(tmp / "clone")
    runner = Runner(tmp)
    built = runner("build", "//app:image", cwd=ws, timeout=900)
    assert built.code == 0, built
    return ws, runner


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A runtime dir and layer store of this test's own; its containers killed afterwards."""
    env = {"PBUILD_RUNTIME_DIR": str(tmp_path / "run"), "PBUILD_LAYER_STORE": str(tmp_path / "layers")}
    yield env
    kill_leftovers(tmp_path / "run")


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    with user_folder(request.param) as folder:
        yield folder


def as_user(user: LauncherUser, *args: str, stdin: str | None = None) -> Result:
    """The real `pbuild` CLI as ``user`` in their folder (no workspace there)."""
    proc = subprocess.run([*user.prefix(), *PBUILD, *args], cwd=user.base, env=user.env, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr, args)


# -- a label: built, then run in Docker's order --------------------------------------------------------


def test_the_issues_command_line(app: tuple[Path, Runner], runtime: dict[str, str]) -> None:
    ws, runner = app
    result = runner("run", "--rm", "-e", "FOO=bar", "--entrypoint", "/usr/bin/python3.11", "//app:image",
                    "-c", PRINT_FOO, cwd=ws, env=runtime)  # fmt: skip
    assert result.code == 0, str(result)
    assert result.out == "bar\n"
    # the same with Docker's other spellings of the options
    result = runner("run", "--rm", "--env=FOO=baz", "--entrypoint=/usr/bin/python3.11", "//app:image", "--",
                    "-c", PRINT_FOO, cwd=ws, env=runtime)  # fmt: skip
    assert result.code == 0 and result.out == "baz\n", str(result)
    result = runner("run", "--rm", "-eFOO=qux", "--entrypoint", "/usr/bin/python3.11", "//app:image",
                    "-c", PRINT_FOO, cwd=ws, env=runtime)  # fmt: skip
    assert result.code == 0 and result.out == "qux\n", str(result)
    assert runner("run", "//app:image", cwd=ws, env=runtime).out == "18\n"  # the image's own command


def test_the_old_order_is_refused_with_the_fix(app: tuple[Path, Runner], runtime: dict[str, str]) -> None:
    ws, runner = app
    result = runner("run", "//app:image", "-e", "FOO=bar", "--rm", cwd=ws, env=runtime)
    assert result.code == 125, str(result)
    assert result.err.splitlines() == [
        "pbuild: error: -e after the image: options go before the image "
        "(pbuild run [OPTIONS] TARGET|IMAGE [COMMAND] [ARG...])",
        "  hint: move -e before the image; if the command really starts with -e, put -- before it",
    ]
    assert not list((Path(runtime["PBUILD_RUNTIME_DIR"]) / "containers").glob("*"))  # no container made


def test_a_container_exits_with_its_own_code_and_pbuild_with_125(app: tuple[Path, Runner],
                                                                 runtime: dict[str, str]) -> None:
    ws, runner = app
    python = ("--rm", "--entrypoint", "/usr/bin/python3.11")
    assert runner("run", *python, "//app:image", "-c", "raise SystemExit(2)", cwd=ws, env=runtime).code == 2
    assert runner("run", *python, "//app:image", "-c", "raise SystemExit(125)", cwd=ws, env=runtime).code == 125
    failed = runner("run", "--rm", "--entrypoint", "/no/such", "//app:image", cwd=ws, env=runtime)
    assert failed.code == 127 and "Traceback" not in failed.err, str(failed)


def test_detach_then_exec_with_its_options(app: tuple[Path, Runner], runtime: dict[str, str]) -> None:
    ws, runner = app
    started = runner("run", "-d", "--name", "order-exec", "-e", "FROM_RUN=1", "--entrypoint", "/usr/bin/python3.11",
                     "//app:image", "-c", "import time; time.sleep(120)", cwd=ws, env=runtime)  # fmt: skip
    assert started.code == 0, str(started)
    probe = "import os; print(os.environ.get('FROM_RUN'), os.environ.get('A'), os.getcwd(), os.getuid())"
    python = "/usr/bin/python3.11"
    plain = runner("exec", "order-exec", python, "-c", probe, cwd=ws, env=runtime)
    assert plain.code == 0 and plain.out == "1 None /app 0\n", str(plain)
    changed = runner("exec", "-e", "A=2", "-w", "/tmp", "-u", "1000", "order-exec", python, "-c", probe,
                     cwd=ws, env=runtime)  # fmt: skip
    assert changed.code == 0 and changed.out == "1 2 /tmp 1000\n", str(changed)
    echoed = runner.popen("exec", "-i", "order-exec", "--", python, "-c", "import sys; print(sys.stdin.read())",
                          cwd=ws, env=runtime, stdin=subprocess.PIPE)  # fmt: skip
    out, err = echoed.communicate("from stdin", timeout=60)
    assert echoed.returncode == 0 and out == "from stdin\n", err
    code = runner("exec", "order-exec", python, "-c", "raise SystemExit(3)", cwd=ws, env=runtime).code
    assert code == 3
    refused = runner("exec", "order-exec", "-e", "A=1", python, cwd=ws, env=runtime)
    assert refused.code == 125 and "-e after the container: options go before the container" in refused.err
    assert runner("rm", "-f", "order-exec", cwd=ws, env=runtime).code == 0


# -- an image from disk: as root and as uid 65534 -----------------------------------------------------


def test_an_image_from_disk_with_a_command(user: LauncherUser) -> None:
    layout = make_busybox_image(user.base / "layout")
    user.give(layout)
    result = as_user(user, "run", "--rm", "-e", "A=1", "-w", "/tmp", f"oci:{layout}",
                     "sh", "-c", 'echo "$A $(pwd) $FOO:$*"', "zero", "-e", "--rm", "--")  # fmt: skip
    assert result.code == 0, str(result)
    assert result.out == "1 /tmp bar:-e --rm --\n"
    assert as_user(user, "run", "--rm", f"oci:{layout}").out == "hi\n"  # the image's Cmd
    result = as_user(user, "run", "-it", "--rm", f"oci:{layout}", "sh", "-c", "read x; echo got $x", stdin="")
    assert result.code == 0, str(result)  # -it parsed as -i -t (no terminal here: stdin is a pipe)
    refused = as_user(user, "run", f"oci:{layout}", "--rm")
    assert refused.code == 125 and "--rm after the image" in refused.err, str(refused)


def test_detach_then_exec_from_disk(user: LauncherUser) -> None:
    layout = make_busybox_image(user.base / "layout")
    user.give(layout)
    started = as_user(user, "run", "-dit", "--name", "web", f"oci:{layout}", "sleep", "120")
    assert started.code == 0, str(started)
    result = as_user(user, "exec", "-e", "B=2", "-w", "/", "web", "sh", "-c", 'echo "$FOO $B $(pwd)"')
    assert result.code == 0 and result.out == "bar 2 /\n", str(result)
    assert as_user(user, "rm", "-f", "web").code == 0


def store_image(cache: Path, layout: Path, *names: str) -> str:
    """Put the image of ``layout`` into the image store of the cache dir ``cache``, as `pbuild
    load` does (the real store, over the real CAS); returns its ID."""
    from pbuild.engine.store import LocalStore, OciBlobs
    from pbuild.lib.oci.imagestore import ImageStore

    stored = ImageStore.at(str(cache), OciBlobs(LocalStore(str(cache)))).add_layout(str(layout), names, "test")
    return str(stored.digest)


def test_a_stored_image_by_name_or_id_outside_any_workspace(user: LauncherUser) -> None:
    cache = user.base / "cache"
    layout = make_busybox_image(user.base / "layout", config={**BASE_CONFIG, "Cmd": ["/bin/sh", "-c", "echo stored"]})
    digest = store_image(cache, layout, "127.0.0.1:5000/app:1", "bb")
    user.give(cache)
    user.env["PBUILD_CACHE"] = str(cache)
    assert not (user.base / "WORKSPACE.toml").exists()
    for ref in ("127.0.0.1:5000/app:1", "bb", "bb:latest", "docker.io/library/bb:latest", digest,
                digest.removeprefix("sha256:")[:12]):
        result = as_user(user, "run", "--rm", ref)
        assert result.code == 0 and result.out == "stored\n", (ref, str(result))
    # options before it and a command after it, as for any image
    result = as_user(user, "run", "--rm", "-e", "A=1", "bb", "sh", "-c", "echo $A $FOO")
    assert result.code == 0 and result.out == "1 bar\n", str(result)
    result = as_user(user, "run", "--rm", "--cache-dir", str(cache), "bb", "--", "printf", "%s\\n", "-e")
    assert result.code == 0 and result.out == "-e\n", str(result)
    # not stored: one message with the fix, 125 (run's own error), and nothing run
    for ref, hint in (("bb:2", "`pbuild pull REF` or `pbuild load -i FILE` adds one"),
                      ("app:image", "a target to build is written as a label: //app:image")):
        missing = as_user(user, "run", "--rm", ref)
        assert missing.code == 125 and f"no image '{ref}' in the image store" in missing.err, str(missing)
        assert hint in missing.err and "Traceback" not in missing.err
    refused = as_user(user, "run", "-j", "2", "bb")
    assert refused.code == 125 and "--jobs: build options apply to a target, and bb is an image" in refused.err


def test_platform_picks_the_hosts_image_of_an_index(tmp_path: Path, runtime: dict[str, str]) -> None:
    """An index of two platforms: --platform linux/amd64 (this machine's) runs that one's image."""
    from pbuild.tools.launcher.hostplatform import host_platform

    host = host_platform()
    other = "linux/s390x" if host != "linux/s390x" else "linux/amd64"
    layout = tmp_path / "multi"
    manifests = []
    for platform in (other, host):
        single = make_busybox_image(tmp_path / platform.replace("/", "-"),
                                    config={**BASE_CONFIG, "Cmd": ["/bin/sh", "-c", f"echo {platform}"]})
        shutil.copytree(single / "blobs", layout / "blobs", dirs_exist_ok=True)
        (descriptor,) = json.loads((single / "index.json").read_text())["manifests"]
        os_name, _, arch = platform.partition("/")
        manifests.append({**descriptor, "platform": {"os": os_name, "architecture": arch}, "annotations": {}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}).encode()
    digest = hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(index)}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    runner = Runner(tmp_path)
    for flags in (["--platform", host], [f"--platform={host}"], []):
        result = runner("run", "--rm", *flags, f"oci:{layout}", cwd=tmp_path, env=runtime)
        assert result.code == 0 and result.out == f"{host}\n", (flags, str(result))
    refused = runner("run", "--rm", "--platform", other, f"oci:{layout}", cwd=tmp_path, env=runtime)
    assert refused.code == 125 and f"--platform {other}: not a platform pbuild runs" in refused.err, str(refused)


def test_the_launcher_alone_takes_the_same_order(tmp_path: Path, runtime: dict[str, str]) -> None:
    layout = make_busybox_image(tmp_path / "layout")
    proc = subprocess.run([sys.executable, "-m", "pbuild.tools.launcher", "run", "--rm", "-e", "A=3",
                           f"oci:{layout}", "sh", "-c", "echo $A"],
                          env={**runtime, "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(p for p in sys.path if p)},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "3\n", proc.stderr


def test_a_loaded_image_runs_by_name(app: tuple[Path, Runner], runtime: dict[str, str], tmp_path: Path) -> None:
    """`pbuild load -i` the built image's docker-archive, then `pbuild run` it by its name and by
    its ID from a folder outside any workspace, in Docker's order."""
    ws, runner = app
    cache = tmp_path / "store-cache"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = runner("load", "-i", str(ws / "pbuild-out/app/image/image.tar"), cwd=elsewhere, cache=cache)
    assert loaded.code == 0, str(loaded)
    assert runner("run", "--rm", "pbuild.local/app", cwd=elsewhere, cache=cache, env=runtime).out == "18\n"
    result = runner("run", "--rm", "-e", "FOO=bar", "--entrypoint", "/usr/bin/python3.11", "pbuild.local/app:latest",
                    "-c", PRINT_FOO, cwd=elsewhere, cache=cache, env=runtime)  # fmt: skip
    assert result.code == 0 and result.out == "bar\n", str(result)
    from pbuild.engine.store import LocalStore, OciBlobs
    from pbuild.lib.oci.imagestore import ImageStore

    image = ImageStore.at(str(cache), OciBlobs(LocalStore(str(cache)))).resolve("pbuild.local/app:latest")
    by_id = runner("run", "--rm", str(image.digest).removeprefix("sha256:")[:12], cwd=elsewhere, cache=cache,
                   env=runtime)  # fmt: skip
    assert by_id.code == 0 and by_id.out == "18\n", str(by_id)
