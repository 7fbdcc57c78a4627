"""The image store through the real CLI: ``pbuild pull`` (by tag and by digest) from Debian's
docker-registry, ``images`` (table and JSON, in and outside a workspace), ``tag``, ``rmi`` (with a
real container of the stored image running: refused without -f), ``save``/``load`` round trips
that skopeo and umoci read, a second pull that asks the registry for no blob, and the bad inputs:
a reference without a tag, a missing image, every kind of damaged or hostile archive (refused with
the reason, nothing stored)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pbuild.lib.oci.registry.push import push_layout
from pbuild.lib.oci.registry.transport import Credentials

from tests.e2e.test_commands import IMAGE_WS
from tests.support.launcher import LAUNCHER, kill_leftovers
from tests.support.peers import Registry, docker_registry, require
from tests.support.runner import Result, Runner, WorkspaceFactory, assert_user_error
from tests.support.testimages import make_busybox_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_image(tmp_path_factory.mktemp("busybox") / "layout")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with docker_registry(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    runtime = tmp_path / "runtime"
    yield {"PBUILD_RUNTIME_DIR": str(runtime), "PBUILD_LAYER_STORE": str(tmp_path / "layers"),
           "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    kill_leftovers(runtime)


def _manifest_digest(layout: Path) -> str:
    return str(json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])


def _blob_gets(registry: Registry) -> int:
    """How many blob downloads the registry has served (its access log, one line per request)."""
    log = registry.storage.parent / "registry.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "GET /v2/" in line and "/blobs/sha256:" in line and "response.status=200" in line) \
        if log.exists() else 0


def _stored(pbuild: Runner, cwd: Path, env: dict[str, str], *flags: str) -> list[dict[str, object]]:
    listed = pbuild("images", "--format", "json", *flags, cwd=cwd, env=env)
    assert listed.code == 0, str(listed)
    return list(json.loads(listed.out)["stored"])


def _ok(result: Result) -> Result:
    assert result.code == 0, str(result)
    assert "Traceback" not in result.err, str(result)
    return result


def test_pull_images_tag_rmi(pbuild: Runner, registry: Registry, busybox: Path, tmp_path: Path,
                             env: dict[str, str]) -> None:
    digest = _manifest_digest(busybox)
    push_layout(str(busybox), f"{registry.host}/box:1", plain_http=True)
    outside = tmp_path / "elsewhere"  # no workspace: the store works without one
    outside.mkdir()
    first = _ok(pbuild("pull", f"{registry.host}/box:1", "--plain-http", cwd=outside, env=env))
    assert first.out.splitlines()[0] == f"pulled {registry.host}/box:1"
    assert f"digest {digest}" in first.out and " 0 blob(s) downloaded" not in first.out
    gets = _blob_gets(registry)
    again = _ok(pbuild("pull", f"{registry.host}/box:1", "--plain-http", cwd=outside, env=env))
    assert "0 blob(s) downloaded (0 bytes)" in again.out
    assert _blob_gets(registry) == gets  # the registry served no blob the second time
    _ok(pbuild("pull", f"{registry.host}/box@{digest}", "--plain-http", cwd=outside, env=env))

    stored = _stored(pbuild, outside, env)
    assert [s["id"] for s in stored] == [digest]
    assert stored[0]["names"] == [f"{registry.host}/box:1", f"{registry.host}/box@{digest}"]
    table = _ok(pbuild("images", cwd=outside, env=env)).out.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == [f"{registry.host}/box", "1", digest[7:19]]
    assert _ok(pbuild("images", "--no-trunc", cwd=outside, env=env)).out.splitlines()[1].split()[2] == digest

    assert_user_error(pbuild("pull", f"{registry.host}/box", "--plain-http", cwd=outside, env=env), 2,
                      "names neither a tag nor a digest", f"hint: write {registry.host}/box:TAG")
    assert_user_error(pbuild("pull", f"{registry.host}/box:nope", "--plain-http", cwd=outside, env=env), 1,
                      "HTTP 404", "check that the tag exists")

    _ok(pbuild("tag", f"{registry.host}/box:1", "local/box:2", cwd=outside, env=env))
    _ok(pbuild("tag", digest[7:15], "box", cwd=outside, env=env))  # by ID prefix; :latest
    names = _stored(pbuild, outside, env)[0]["names"]
    assert "docker.io/local/box:2" in names and "docker.io/library/box:latest" in names  # type: ignore[operator]
    untag = _ok(pbuild("rmi", "local/box:2", "box", cwd=outside, env=env))
    assert untag.out.splitlines() == ["Untagged: docker.io/library/box:latest", "Untagged: docker.io/local/box:2"]
    assert_user_error(pbuild("rmi", "missing:1", cwd=outside, env=env), 2, "no image 'missing:1'",
                      "pbuild pull REF")

    # A real container of the stored image: rmi of the image is refused, nothing changes.
    layout = str(stored[0]["layout"])
    launched = subprocess.run([*LAUNCHER, "run", "-d", "--name", "user1", f"oci:{layout}", "--", "sleep", "60"],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert launched.returncode == 0, launched.stderr
    refused = pbuild("rmi", digest[7:19], cwd=outside, env=env)
    assert_user_error(refused, 2, "is used by container(s) user1", "pass -f")
    assert [s["names"] for s in _stored(pbuild, outside, env)] == [stored[0]["names"]]
    forced = _ok(pbuild("rmi", "-f", digest[7:19], cwd=outside, env=env))
    assert forced.out.splitlines()[-1] == f"Deleted: {digest}"
    assert _stored(pbuild, outside, env, "-a") == []
    assert not os.path.exists(layout)


def test_dangling_images_show_with_all(pbuild: Runner, registry: Registry, busybox: Path, tmp_path: Path,
                                       env: dict[str, str]) -> None:
    from tests.support.testimages import file, tar_layer

    other = make_busybox_image(tmp_path / "other", [tar_layer([file("etc/other", b"2\n")])])
    push_layout(str(busybox), f"{registry.host}/box:1", plain_http=True)
    _ok(pbuild("pull", f"{registry.host}/box:1", "--plain-http", cwd=tmp_path, env=env))
    push_layout(str(other), f"{registry.host}/box:1", plain_http=True)  # the tag moves on
    _ok(pbuild("pull", f"{registry.host}/box:1", "--plain-http", cwd=tmp_path, env=env))
    assert [s["id"] for s in _stored(pbuild, tmp_path, env)] == [_manifest_digest(other)]
    every = _stored(pbuild, tmp_path, env, "-a")
    assert [(s["id"], s["names"]) for s in every] == [
        (_manifest_digest(other), [f"{registry.host}/box:1"]), (_manifest_digest(busybox), [])]
    rows = [line.split() for line in _ok(pbuild("images", "-a", cwd=tmp_path, env=env)).out.splitlines()]
    assert rows[2][:3] == ["<none>", "<none>", _manifest_digest(busybox)[7:19]]


def test_images_lists_built_targets_and_the_store(pbuild: Runner, workspace: WorkspaceFactory,
                                                  busybox: Path, tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(IMAGE_WS)
    _ok(pbuild("tag", "//srv:image", "fixture/srv:stored", "-q", cwd=ws, env=env))
    digest = (ws / "pbuild-out" / "srv" / "image" / "digest").read_text().strip()
    rows = [line.split() for line in _ok(pbuild("images", cwd=ws / "srv", env=env)).out.splitlines()]
    assert rows[1][:3] == ["//srv:image", "fixture/srv:1.0", digest[7:19]]
    assert rows[2][:3] == ["docker.io/fixture/srv", "stored", digest[7:19]]
    doc = json.loads(_ok(pbuild("images", "--format", "json", cwd=ws, env=env)).out)
    assert doc["built"][0]["target"] == "//srv:image" and doc["stored"][0]["id"] == digest
    # save of a target: built, then archived with its repo_tags
    _ok(pbuild("save", "-o", str(tmp_path / "srv.tar"), "//srv:image", "-q", cwd=ws, env=env))
    manifest = _members(tmp_path / "srv.tar")["manifest.json"]
    assert json.loads(manifest)[0]["RepoTags"] == ["docker.io/fixture/srv:1.0"]
    assert_user_error(pbuild("tag", "//srv:note", "x:1", "-q", cwd=ws, env=env), 2, "//srv:note is not an image")


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("archive_format", ["docker-archive", "oci-archive"])
def test_save_and_load_round_trip(pbuild: Runner, busybox: Path, tmp_path: Path, env: dict[str, str],
                                  archive_format: str) -> None:
    skopeo = require("skopeo")
    src = tmp_path / "src.tar"
    _docker_archive_of(busybox, src, tmp_path)  # Docker's legacy form: pbuild writes the OCI manifest
    loaded = _ok(pbuild("load", "-i", str(src), cwd=tmp_path, env=env))
    assert loaded.out.strip() == "Loaded image: docker.io/library/box:1"
    digest = _stored(pbuild, tmp_path, env)[0]["id"]
    saved, twice = tmp_path / "saved.tar", tmp_path / "twice.tar"
    _ok(pbuild("save", "-o", str(saved), "box:1", "--format", archive_format, cwd=tmp_path, env=env))
    _ok(pbuild("save", "-o", str(twice), "box:1", "--format", archive_format, cwd=tmp_path, env=env))
    assert saved.read_bytes() == twice.read_bytes()  # deterministic
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically
    inspect = subprocess.run([skopeo, "inspect", f"{archive_format}:{saved}"], capture_output=True, text=True,
                             check=False, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    layers = json.loads(inspect.stdout)["Layers"]
    config = json.loads(subprocess.run([skopeo, "inspect", "--config", f"{archive_format}:{saved}"],
                                       capture_output=True, text=True, check=True, timeout=60).stdout)
    assert len(layers) == len(config["rootfs"]["diff_ids"]) == 2
    if archive_format == "oci-archive":
        umoci = require("umoci")
        unpacked = tmp_path / "unpacked"
        unpacked.mkdir()
        with tarfile.open(saved) as tar:
            tar.extractall(unpacked, filter="data")
        stat = subprocess.run([umoci, "stat", "--image", f"{unpacked}:1", "--json"], capture_output=True, text=True,
                              check=False, timeout=60)
        assert stat.returncode == 0, stat.stderr
    _ok(pbuild("rmi", "box:1", cwd=tmp_path, env=env))
    assert _stored(pbuild, tmp_path, env, "-a") == []
    again = _ok(pbuild("load", "-i", str(saved), cwd=tmp_path, env=env))
    assert again.out.strip() == "Loaded image: docker.io/library/box:1"
    assert [(s["id"], s["names"]) for s in _stored(pbuild, tmp_path, env)] == [
        (digest, ["docker.io/library/box:1"])]


def _docker_archive_of(layout: Path, dest: Path, tmp_path: Path) -> None:
    """A docker-archive of ``layout`` written by skopeo (a peer, not pbuild), named box:1."""
    skopeo = require("skopeo")
    subprocess.run([skopeo, "copy", f"oci:{layout}", f"docker-archive:{dest}:box:1"], check=True,
                   capture_output=True, timeout=120)


def _rewrite(source: Path, dest: Path, change: Callable[[tarfile.TarFile, list[tuple[tarfile.TarInfo, bytes]]], None]
             ) -> None:
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        change(out, members)
        for member, data in members:
            member.size = len(data)
            out.addfile(member, io.BytesIO(data) if member.isfile() else None)


def _add(out: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data)
    out.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _flip_layer(members: list[tuple[tarfile.TarInfo, bytes]], *, grow: bool = False) -> None:
    for number, (member, data) in enumerate(members):
        if member.isfile() and len(data) > 10_000:  # the busybox layer
            changed = data + b"\0" * 512 if grow else data[:-600] + bytes([data[-600] ^ 1]) + data[-599:]
            members[number] = (member, changed)
            return
    raise AssertionError("no layer found")


HOSTILE: dict[str, tuple[str, Callable[[tarfile.TarFile, list[tuple[tarfile.TarInfo, bytes]]], None], str]] = {
    "path traversal": ("docker", lambda out, m: _add(out, "../escape", b"x"), "leaves the archive's folder"),
    "absolute name": ("docker", lambda out, m: _add(out, "/etc/evil", b"x"), "has an absolute name"),
    "absolute symlink": ("docker", lambda out, m: _add(out, "link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                         "outside the archive"),
    "escaping symlink": ("docker", lambda out, m: _add(out, "a/link", kind=tarfile.SYMTYPE, link="../../x"),
                         "outside the archive"),
    "dangling symlink": ("docker", lambda out, m: _add(out, "a/link", kind=tarfile.SYMTYPE, link="../nothing"),
                         "not a file of the archive"),
    "hard link": ("docker", lambda out, m: _add(out, "hard", kind=tarfile.LNKTYPE, link="manifest.json"),
                  "is a hard link"),
    "duplicate member": ("docker", lambda out, m: _add(out, "manifest.json", b"[]"), "appears twice"),
    "giant json": ("docker", lambda out, m: _add(out, "repositories", b" " * (5 << 20)), "more than the"),
    "layer digest": ("docker", lambda out, m: _flip_layer(m), "does not match its digest"),
    "layer size": ("oci", lambda out, m: _flip_layer(m, grow=True), "has "),
    "oci layer digest": ("oci", lambda out, m: _flip_layer(m), "does not match its digest"),
    "missing blob": ("oci", lambda out, m: m.__setitem__(slice(None), [(i, d) for i, d in m if len(d) < 10_000]),
                     "is missing"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_is_stored(pbuild: Runner, busybox: Path, tmp_path: Path,
                                                            env: dict[str, str], case: str) -> None:
    kind, change, reason = HOSTILE[case]
    good = tmp_path / "good.tar"
    if kind == "docker":
        _docker_archive_of(busybox, good, tmp_path)  # skopeo's: manifest.json, no OCI layout inside
    else:
        subprocess.run([require("skopeo"), "copy", f"oci:{busybox}", f"oci-archive:{good}:box:1"], check=True,
                       capture_output=True, timeout=120)
    bad = tmp_path / "bad.tar"
    _rewrite(good, bad, change)
    result = pbuild("load", "-i", str(bad), cwd=tmp_path, env=env)
    assert_user_error(result, 2, reason)
    assert _stored(pbuild, tmp_path, env, "-a") == []
    cache = Path(pbuild.cache)
    assert not (cache / "oci" / "sha256").exists() or not list((cache / "oci" / "sha256").iterdir()), \
        "a refused archive put blobs into the CAS"
    assert not (cache / "images" / "tmp").exists() or not list((cache / "images" / "tmp").iterdir())


def test_not_an_archive(pbuild: Runner, tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    assert_user_error(pbuild("load", "-i", str(tmp_path / "junk.tar"), cwd=tmp_path, env=env), 2, "not a tar")
    assert_user_error(pbuild("load", "-i", str(tmp_path / "none.tar"), cwd=tmp_path, env=env), 2, "does not exist")
    assert_user_error(pbuild("save", "-o", str(tmp_path / "x.tar"), "nope:1", cwd=tmp_path, env=env), 2,
                      "no image 'nope:1'")


def test_the_store_as_an_unprivileged_user(pbuild: Runner, registry: Registry, busybox: Path,
                                           nobody_dir: Path) -> None:
    from tests.support.runner import SETPRIV_NOBODY

    digest = _manifest_digest(busybox)
    push_layout(str(busybox), f"{registry.host}/box:1", plain_http=True)
    cache = nobody_dir / "cache"
    env = {"HOME": str(nobody_dir), "PBUILD_RUNTIME_DIR": str(nobody_dir / "run"),
           "DOCKER_CONFIG": str(nobody_dir / "docker")}

    def run(*args: str) -> Result:
        return pbuild(*args, cwd=nobody_dir, cache=cache, env=env, prefix=SETPRIV_NOBODY)

    _ok(run("pull", f"{registry.host}/box:1", "--plain-http"))
    images = cache / "images"
    assert images.stat().st_uid == 65534 and images.stat().st_mode & 0o077 == 0  # private to its user
    archive = nobody_dir / "box.tar"
    _ok(run("save", "-o", str(archive), f"{registry.host}/box:1"))
    assert archive.stat().st_uid == 65534
    removed = _ok(run("rmi", f"{registry.host}/box:1"))
    assert removed.out.splitlines()[-1] == f"Deleted: {digest}"
    _ok(run("load", "-i", str(archive)))
    doc = json.loads(_ok(run("images", "--format", "json")).out)
    assert [(s["id"], s["names"]) for s in doc["stored"]] == [(digest, [f"{registry.host}/box:1"])]


def test_pull_of_an_index_takes_the_platform(pbuild: Runner, registry: Registry, tmp_path: Path,
                                             env: dict[str, str]) -> None:
    from tests.support.peers import make_oci_layout

    multi = make_oci_layout(tmp_path / "multi", [{"etc/release": b"multi\n"}], as_index=True)
    push_layout(str(multi.path), f"{registry.host}/multi:1", plain_http=True)
    index = json.loads((multi.path / "blobs" / "sha256" / multi.manifest_digest[7:]).read_text())
    child = index["manifests"][0]["digest"]
    _ok(pbuild("pull", f"{registry.host}/multi:1", "--plain-http", cwd=tmp_path, env=env))  # the host's: amd64
    assert [s["id"] for s in _stored(pbuild, tmp_path, env)] == [child]
    assert_user_error(pbuild("pull", f"{registry.host}/multi:1", "--plain-http", "--platform", "linux/s390x",
                             cwd=tmp_path, env=env), 1, "has no manifest for platform linux/s390x")


def test_pull_with_credentials_from_the_docker_config(pbuild: Runner, busybox: Path, tmp_path: Path,
                                                      env: dict[str, str]) -> None:
    import base64

    with docker_registry(tmp_path / "auth-registry", user="alice", password="s3cret") as secured:
        push_layout(str(busybox), f"{secured.host}/box:1", plain_http=True, credentials=Credentials("alice", "s3cret"))
        assert_user_error(pbuild("pull", f"{secured.host}/box:1", "--plain-http", cwd=tmp_path, env=env), 1,
                          "refused access anonymously", "~/.docker/config.json")
        config = Path(env["DOCKER_CONFIG"])
        config.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(b"alice:s3cret").decode()
        (config / "config.json").write_text(json.dumps({"auths": {secured.host: {"auth": auth}}}))
        _ok(pbuild("pull", f"{secured.host}/box:1", "--plain-http", cwd=tmp_path, env=env))
        assert [s["id"] for s in _stored(pbuild, tmp_path, env)] == [_manifest_digest(busybox)]


def test_a_manifest_that_is_not_the_digest_the_registry_claims(pbuild: Runner, tmp_path: Path,
                                                               env: dict[str, str]) -> None:
    """A registry (or a proxy) whose Docker-Content-Digest differs from the bytes it sends."""
    import http.server
    import threading

    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {}, "layers": []}).encode()

    class Lying(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Docker-Content-Digest", "sha256:" + "0" * 64)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = pbuild("pull", f"127.0.0.1:{server.server_port}/x:1", "--plain-http", cwd=tmp_path, env=env)
    finally:
        server.shutdown()
    assert_user_error(result, 1, "but the registry says sha256:" + "0" * 64)
    assert _stored(pbuild, tmp_path, env, "-a") == []


def test_concurrent_pulls_and_a_compressed_archive(pbuild: Runner, registry: Registry, busybox: Path,
                                                   tmp_path: Path, env: dict[str, str]) -> None:
    import gzip

    for tag in ("1", "2", "3"):
        push_layout(str(busybox), f"{registry.host}/box:{tag}", plain_http=True)
    procs = [pbuild.popen("pull", f"{registry.host}/box:{tag}", "--plain-http", cwd=tmp_path, env=env)
             for tag in ("1", "2", "3")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    stored = _stored(pbuild, tmp_path, env, "-a")
    assert [s["names"] for s in stored] == [[f"{registry.host}/box:{tag}" for tag in ("1", "2", "3")]]
    saved = tmp_path / "box.tar"
    _ok(pbuild("save", "-o", str(saved), f"{registry.host}/box:2", cwd=tmp_path, env=env))
    (tmp_path / "box.tar.gz").write_bytes(gzip.compress(saved.read_bytes()))  # docker save | gzip
    _ok(pbuild("rmi", stored[0]["id"], cwd=tmp_path, env=env))  # type: ignore[arg-type]
    loaded = _ok(pbuild("load", "-i", str(tmp_path / "box.tar.gz"), cwd=tmp_path, env=env))
    assert loaded.out.strip() == f"Loaded image: {registry.host}/box:2"


def test_push_of_a_stored_image(pbuild: Runner, registry: Registry, busybox: Path, tmp_path: Path,
                                env: dict[str, str]) -> None:
    skopeo = require("skopeo")
    digest = _manifest_digest(busybox)
    push_layout(str(busybox), f"{registry.host}/box:1", plain_http=True)
    _ok(pbuild("pull", f"{registry.host}/box:1", "--plain-http", cwd=tmp_path, env=env))
    _ok(pbuild("tag", f"{registry.host}/box:1", f"{registry.host}/copy:2", cwd=tmp_path, env=env))
    pushed = _ok(pbuild("push", f"{registry.host}/copy:2", "--plain-http", cwd=tmp_path, env=env))  # to its name
    assert pushed.out.splitlines()[0] == f"pushed {registry.host}/copy:2@{digest}"
    _ok(pbuild("push", digest[7:19], f"{registry.host}/third:3", "--plain-http", cwd=tmp_path, env=env))
    for ref in ("copy:2", "third:3"):
        inspect = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{registry.host}/{ref}"],
                                 capture_output=True, text=True, check=True, timeout=60)
        assert json.loads(inspect.stdout)["Digest"] == digest
    assert_user_error(pbuild("push", digest[7:19], "--plain-http", cwd=tmp_path, env=env), 2,
                      "is an image ID; pbuild push needs a name")
    assert_user_error(pbuild("push", "//srv:image", cwd=tmp_path, env=env), 2, "no REF to push to")
