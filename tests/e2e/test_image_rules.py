"""The layer, image and deb_packages rules through the real CLI on fixture workspaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.debfixtures import DebSpec, make_keyring, serve, write_archive
from tests.support.runner import (
    SETPRIV_NOBODY,
    Runner,
    WorkspaceFactory,
    assert_user_error,
    chown_tree,
    write_tree,
)

LAYER_WS = {
    "srv/BUILD.toml": """
        [files]
        rule = "layer"
        srcs = ["hello.txt", "bin/run.sh"]
        prefix = "/opt/app"
        modes = { "/opt/app/hello.txt" = "0600" }
        symlinks = { "/usr/bin/run" = "/opt/app/bin/run.sh" }
        directories = ["/var/empty"]

        [image]
        rule = "image"
        layers = [":files"]
        entrypoint = ["/opt/app/bin/run.sh"]
        cmd = ["--flag"]
        env = { GREETING = "hi" }
        workdir = "/opt/app"
        user = "65534"
        labels = { "org.example.team" = "build" }
        exposed_ports = ["8080/tcp"]
        annotations = { "org.opencontainers.image.source" = "fixture" }
        repo_tags = ["fixture/srv:1.0"]

        [child]
        rule = "image"
        base = ":image"
        layers = [":extra"]

        [extra]
        rule = "layer"
        srcs = ["extra.txt"]
        compression = "zstd"
    """,
    "srv/hello.txt": "hello\n",
    "srv/bin/run.sh": "#!/bin/sh\necho run\n",
    "srv/extra.txt": "extra\n",
}


def test_layer_and_image(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace(LAYER_WS)
    (ws / "srv/bin/run.sh").chmod(0o755)
    result = pbuild("build", "//srv:image", "//srv:child", cwd=ws)
    assert result.code == 0, result
    out = ws / "pbuild-out/srv"
    with tarfile.open(out / "files.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["opt/app/hello.txt"].mode == 0o600
    assert members["opt/app/bin/run.sh"].mode == 0o755
    assert members["usr/bin/run"].linkname == "/opt/app/bin/run.sh"
    assert members["var/empty"].isdir()
    meta = json.loads((out / "files.layer.json").read_text())
    assert meta["media_type"].endswith("tar+gzip") and meta["digest"].startswith("sha256:")
    digest = (out / "image/digest").read_text()
    assert digest.startswith("sha256:") and digest.endswith("\n") and len(digest) == 72
    layout = out / "image/oci"
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest.strip()
    manifest = json.loads((layout / "blobs/sha256" / digest.strip()[7:]).read_bytes())
    assert manifest["annotations"] == {"org.opencontainers.image.source": "fixture"}
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert config["config"]["Entrypoint"] == ["/opt/app/bin/run.sh"] and config["config"]["User"] == "65534"
    assert config["config"]["Labels"] == {"org.example.team": "build"}
    assert config["rootfs"]["diff_ids"] == [meta["diff_id"]]
    assert str(ws) not in (out / "image/image.tar").read_bytes().decode("latin-1")
    child = json.loads((out / "child/oci/index.json").read_text())["manifests"][0]
    child_manifest = json.loads((out / "child/oci/blobs/sha256" / child["digest"][7:]).read_bytes())
    assert [layer["mediaType"].rsplit("+", 1)[-1] for layer in child_manifest["layers"]] == ["gzip", "zstd"]
    assert child["annotations"]["org.opencontainers.image.ref.name"] == "srv/child:latest"
    again = pbuild("build", "//srv:image", "//srv:child", cwd=ws)
    assert again.code == 0 and " executed" not in again.summary, again
    if shutil.which("skopeo"):
        # By its tag: the layout's index.json also lists the image's SBOM artifact (untagged).
        subprocess.run(["skopeo", "inspect", f"oci:{out / 'child/oci'}:srv/child:latest"], check=True,
                       capture_output=True)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        ("""
            [l]
            rule = "layer"
            srcs = ["a.txt"]
            symlinks = { "/a.txt" = "b" }
         """, ["two layer entries at one path /a.txt", "BUILD.toml:"]),
        ("""
            [l]
            rule = "layer"
            srcs = ["a.txt"]
            prefix = "/opt/../../etc"
         """, ["escapes the image root", "prefix"]),
        ("""
            [l]
            rule = "layer"
            directories = ["../outside"]
         """, ["escapes the image root"]),
        ("""
            [l]
            rule = "layer"
            srcs = ["a.txt"]

            [i]
            rule = "image"
            layers = [":l"]
         """, ["an image needs an entrypoint or a cmd"]),
        ("""
            [l]
            rule = "layer"
            srcs = ["a.txt"]
            modes = { "/a.txt" = "rwx" }
         """, ["is not an octal mode"]),
    ],
    ids=["same-path", "escaping-prefix", "escaping-directory", "no-entrypoint", "bad-mode"],
)
def test_bad_layer_and_image_input(workspace: WorkspaceFactory, pbuild: Runner, build: str,
                                   fragments: list[str]) -> None:
    ws = workspace({"p/BUILD.toml": build, "p/a.txt": "a\n"})
    target = "//p:i" if "[i]" in build else "//p:l"
    assert_user_error(pbuild("build", target, cwd=ws), 2, *fragments)


def test_base_that_is_not_an_oci_layout(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace({
        "p/BUILD.toml": """
            [base]
            rule = "filegroup"
            srcs = ["fake/index.json", "fake/oci-layout"]

            [notes]
            rule = "filegroup"
            srcs = ["fake/oci-layout"]

            [i]
            rule = "image"
            base = ":base"
            cmd = ["/bin/true"]

            [j]
            rule = "image"
            base = ":notes"
            cmd = ["/bin/true"]
        """,
        "p/fake/index.json": '{"schemaVersion": 2, "manifests": []}',
        "p/fake/oci-layout": '{"imageLayoutVersion": "1.0.0"}',
    })
    result = pbuild("build", "//p:i", cwd=ws)
    assert result.code != 0 and "Traceback" not in result.err, result
    assert "is not a valid OCI layout: index.json lists no manifests" in result.err, result
    assert_user_error(pbuild("build", "//p:j", cwd=ws), 2, "holds no OCI layout")


# ---------------------------------------------------------------------------------------------
# deb_packages end to end against a local signed archive


DEB_BUILD = """
[base]
rule = "deb_packages"
packages = ["python3.11-minimal"]
"""


@pytest.fixture
def deb_archive(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "gnupg"
    keyring = make_keyring(home)
    root = tmp_path / "archive"
    specs = [
        DebSpec("python3.11-minimal", version="3.11.2-6", depends="libc6",
                files={"usr/bin/python3.11": b"\x7fELF"}, modes={"usr/bin/python3.11": 0o755}),
        DebSpec("libc6", files={"lib/x86_64-linux-gnu/libc.so.6": b"\x7fELF libc"}),
    ]
    write_archive(root, "bookworm", specs, gnupg_home=home)
    with serve(root) as url:
        yield url, root, keyring


def test_deb_packages_lock_build_and_errors(workspace: WorkspaceFactory, pbuild: Runner, deb_archive) -> None:  # type: ignore[no-untyped-def]
    url, root, keyring = deb_archive
    ws = workspace({"third_party/debian/BUILD.toml": DEB_BUILD})
    env = {"PBUILD_DEBIAN_MIRROR": url, "PBUILD_DEBIAN_KEYRING": str(keyring)}
    # No lock yet: analysis says how to make one.
    assert_user_error(pbuild("build", "//third_party/debian:base", cwd=ws, env=env), 2,
                      "no Debian lock third_party/debian/debian.lock.json", "./pbuild lock --debian")
    locked = pbuild("lock", "--debian", cwd=ws, env=env)
    assert locked.code == 0, locked
    assert "127.0.0.1" not in (ws / "third_party/debian/debian.lock.json").read_text()
    built = pbuild("build", "//third_party/debian:base", cwd=ws, env=env)
    assert built.code == 0, built
    with tarfile.open(ws / "pbuild-out/third_party/debian/base/layer.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/libc.so.6", "lib", "etc/passwd", "tmp",
            "var/lib/dpkg/status.d/libc6"} <= names
    # The package list changed: the lock is out of date.
    (ws / "third_party/debian/BUILD.toml").write_text(DEB_BUILD.replace('["python3.11-minimal"]', '["libc6"]'))
    assert_user_error(pbuild("build", "//third_party/debian:base", cwd=ws, env=env), 2,
                      "out of date with the package list", "./pbuild lock --debian", "BUILD.toml:")
    # The mirror now serves other bytes for a locked .deb: the fetch names the file and both hashes.
    (ws / "third_party/debian/BUILD.toml").write_text(DEB_BUILD)
    deb = next(root.rglob("libc6_*.deb"))
    deb.write_bytes(deb.read_bytes() + b"tampered")
    result = pbuild("build", "//third_party/debian:base", cwd=ws, env=env, cache=ws.parent / "fresh-cache")
    assert result.code != 0 and "Traceback" not in result.err, result
    assert deb.name in result.err and "does not match the Debian lock" in result.err and "expected sha256" in result.err


def test_base_from_a_layout_in_the_source_tree(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    from pbuild.rules.oci import layout
    from pbuild.rules.oci.layerwriter import LayerEntry, write_layer

    ws = workspace({
        "p/BUILD.toml": """
            [base]
            rule = "filegroup"
            srcs = { glob = ["base/**"] }

            [i]
            rule = "image"
            base = ":base"
            env = { CHILD = "1" }
        """,
    })
    blob = tmp_path / "l.tar.gz"
    digests = write_layer([LayerEntry("etc/hello", "file", 0o644, data=b"hi\n")], str(blob))
    image, layers = layout.build_image(base=None, layers=[layout.BlobRef(digests, str(blob), "base layer")],
                                       run=layout.RunConfig(cmd=("/bin/true",)), epoch=0, annotations={})
    layout.write_layout(str(ws / "p/base"), image, layers, ["base:1"])
    result = pbuild("build", "//p:i", cwd=ws)
    assert result.code == 0, result
    built = layout.read_layout(str(ws / "pbuild-out/p/i/oci"))
    assert [layer.digests.diff_id for layer in built.layers] == [digests.diff_id]
    assert built.config["Cmd"] == ["/bin/true"] and "CHILD=1" in built.config["Env"]
    for source in (ws / "p/base/blobs/sha256").iterdir():  # the user's files were copied, not linked
        output = ws / "pbuild-out/p/i/oci/blobs/sha256" / source.name
        if output.exists():
            assert not output.samefile(source)
        assert source.stat().st_mode & 0o200


def test_wheel_layer_budget() -> None:
    from pbuild.engine.api import File
    from pbuild.rules.oci.rules import group_wheels
    from pbuild.rules.python.providers import Wheel

    wheels = [Wheel(n, "1", f"{n}-1-py3-none-any.whl", "0" * 64, File(f"w/{n}.whl")) for n in "abcde"]
    assert [[w.name for w in g] for g in group_wheels(wheels, 10)] == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert [[w.name for w in g] for g in group_wheels(wheels, 3)] == [["a"], ["b"], ["c", "d", "e"]]
    assert [[w.name for w in g] for g in group_wheels(wheels, 0)] == [["a", "b", "c", "d", "e"]]


def test_py_binary_layers_need_an_interpreter(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace({
        "p/BUILD.toml": """
            [bin]
            rule = "py_binary"
            srcs = ["main.py"]
            main = "main.py"

            [no_python]
            rule = "image"
            layers = [":bin"]

            [given]
            rule = "image"
            layers = [":bin"]
            interpreter = "/opt/python/bin/python3.11"
        """,
        "p/main.py": "print('hi')\n",
    })
    assert_user_error(pbuild("build", "//p:no_python", cwd=ws), 2, "no layer before it provides a Python interpreter")
    result = pbuild("build", "//p:given", cwd=ws)
    assert result.code == 0, result
    from pbuild.rules.oci import layout

    built = layout.read_layout(str(ws / "pbuild-out/p/given/oci"))
    assert built.config["Entrypoint"][:2] == ["/opt/python/bin/python3.11", "-m"]
    assert "PYTHONPATH=/app" in built.config["Env"] and built.config["WorkingDir"] == "/app"
    with tarfile.open(built.layers[-1].path) as tar:
        names = tar.getnames()
    assert "app/p/main.py" in names and any(n.startswith("app/p/__pycache__/main.") for n in names)


def test_layer_and_image_as_an_unprivileged_user(tmp_path: Path, nobody_dir: Path) -> None:
    digests = []
    for top, nobody in ((tmp_path / "root", False), (nobody_dir / "nobody", True)):
        ws = top / "ws"
        write_tree(ws, {"WORKSPACE.toml": '[workspace]\nname = "fixture"\n', **LAYER_WS})
        (ws / "srv/bin/run.sh").chmod(0o755)
        if nobody:
            chown_tree(top, 65534, 65534)
        result = Runner(top)("build", "//srv:child", cwd=ws, cache=top / "cache",
                             env={"HOME": str(top), "XDG_CONFIG_HOME": str(top / "config")},
                             prefix=SETPRIV_NOBODY if nobody else ())
        assert result.code == 0, result
        digests.append((ws / "pbuild-out/srv/child/digest").read_text())
    assert digests[0] == digests[1]
