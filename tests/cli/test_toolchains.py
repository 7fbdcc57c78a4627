"""Toolchains: actions on a root filesystem of pinned Debian packages, not on the host's.

The real-root tests build the repository's own ``//third_party/debian:shell`` (its lock is copied
into the fixture workspace; the .debs come from the host's apt mirror, checked against the lock).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from pbuild.engine.api import File, Label, ProcessAction, Toolchain, ToolchainLayer
from pbuild.engine.errors import BuildFailed
from pbuild.engine.hashing import host_fingerprint
from pbuild.engine.keys import key_material
from pbuild.engine.toolchains import LayerFiles, ToolchainTrees

from tests.support.debianlock import single_platform_lock
from tests.support.runner import Runner, WorkspaceFactory, assert_user_error

SHELL_BUILD = """
[shell]
rule = "deb_packages"
packages = ["bash", "coreutils", "sed", "grep", "findutils", "tar", "gzip", "diffutils"]
suites = ["bookworm", "bookworm-updates"]
"""

MARKED_OS_RELEASE = 'PRETTY_NAME="pbuild toolchain fixture"\nID=toolchain-fixture\n'


def _shell_workspace(workspace: WorkspaceFactory, secret: Path, *, name: str = "ws",
                     files: dict[str, str] | None = None, plugins: str = "") -> Path:
    """A workspace whose genrules default to the shell toolchain, and one on an image toolchain."""
    lock = single_platform_lock()
    return workspace({
        "third_party/debian/BUILD.toml": SHELL_BUILD,
        "third_party/debian/debian.lock.json": lock,
        "tc/os-release": MARKED_OS_RELEASE,
        "tc/BUILD.toml": """
[marker]
rule = "layer"
srcs = ["os-release"]
prefix = "/etc"

[marked]
rule = "image"
layers = ["//third_party/debian:shell", ":marker"]
cmd = ["/bin/bash"]
""",
        "g/BUILD.toml": f"""
[os]
rule = "genrule"
toolchain = "//tc:marked"
outs = ["os.txt"]
cmd = "cat /etc/os-release > $@; if test -e /usr/bin/python3.11; then echo host-python >> $@; fi"

[default]
rule = "genrule"
outs = ["default.txt"]
cmd = "bash --version | head -1 > $@; sed --version | head -1 >> $@"

[secret]
rule = "genrule"
outs = ["secret.txt"]
cmd = "cat {secret} > $@"

[jq]
rule = "genrule"
outs = ["jq.txt"]
cmd = "echo '{{}}' | jq . > $@"

[host]
rule = "genrule"
toolchain = "host"
outs = ["host.txt"]
cmd = "test -e /usr/bin/python3.11 && echo host > $@"
""" + "".join(f"""
[many{i}]
rule = "genrule"
outs = ["many{i}.txt"]
cmd = "echo {i} | tr 0-9 a-j > $@"
""" for i in range(6)),
        **(files or {}),
    }, name=name, workspace_toml=f'[workspace]\nname = "fixture"\n{plugins}\n[toolchains]\nshell = "//third_party/debian:shell"\n')


def _trees(cache: Path) -> list[str]:
    top = cache / "toolchains"
    return sorted(n for n in os.listdir(top) if not n.endswith(".lock")) if top.is_dir() else []


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret.txt"
    path.write_text("the host's own file\n")
    return path


def test_genrule_runs_on_its_toolchain_root(workspace: WorkspaceFactory, pbuild: Runner, secret: Path) -> None:
    ws = _shell_workspace(workspace, secret)
    result = pbuild("build", "//g:os", "//g:default", "//g:host", cwd=ws, timeout=600)
    assert result.code == 0, result
    os_text = (ws / "pbuild-out/g/os.txt").read_text()
    assert os_text == MARKED_OS_RELEASE  # the image toolchain's /etc, and no host python3.11
    default = (ws / "pbuild-out/g/default.txt").read_text()
    assert default.startswith("GNU bash") and "GNU sed" in default
    assert (ws / "pbuild-out/g/host.txt").read_text() == "host\n"  # toolchain = "host": today's root
    # The host's files are out of reach, even by absolute path.
    result = pbuild("build", "//g:secret", cwd=ws, timeout=600)
    assert_user_error(result, 1, "//g:secret", "No such file or directory")
    assert _trees(pbuild.cache) and not [n for n in _trees(pbuild.cache) if n.endswith(".tmp")]


def test_missing_program_names_the_toolchain_and_the_fix(workspace: WorkspaceFactory, pbuild: Runner,
                                                         secret: Path) -> None:
    ws = _shell_workspace(workspace, secret)
    result = pbuild("build", "//g:jq", cwd=ws, timeout=600)
    assert_user_error(result, 1, "//g:jq", "the toolchain //third_party/debian:shell has no program 'jq'",
                      "add the Debian package that provides it", "./pbuild lock --debian")


def test_tree_is_unpacked_once_for_many_actions_and_concurrent_builds(
        workspace: WorkspaceFactory, pbuild: Runner, secret: Path) -> None:
    first = _shell_workspace(workspace, secret, name="one")
    second = _shell_workspace(workspace, secret, name="two")
    warm = pbuild("build", "//third_party/debian:shell", cwd=first, timeout=600)  # fetch the .debs once
    assert warm.code == 0, warm
    assert _trees(pbuild.cache) == []  # building the layer needs no tree
    procs = [pbuild.popen("build", "--jobs", "2", *(f"//g:many{i}" for i in range(6)), cwd=ws)
             for ws in (first, second)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
    trees = _trees(pbuild.cache)
    assert len(trees) == 1, trees  # one tree for both builds and all their actions, no temp left
    tree = pbuild.cache / "toolchains" / trees[0]
    inode = tree.stat().st_ino
    (first / "g/BUILD.toml").write_text((first / "g/BUILD.toml").read_text().replace("tr 0-9 a-j", "tr 0-9 k-t"))
    result = pbuild("build", "//g:many3", cwd=first, timeout=600)
    assert result.code == 0, result
    assert (first / "pbuild-out/g/many3.txt").read_text() == "n\n"
    assert tree.stat().st_ino == inode  # reused, not unpacked again


def test_half_unpacked_tree_is_never_used(workspace: WorkspaceFactory, pbuild: Runner, secret: Path) -> None:
    ws = _shell_workspace(workspace, secret)
    assert pbuild("build", "//g:default", cwd=ws, timeout=600).code == 0
    [name] = _trees(pbuild.cache)
    top = pbuild.cache / "toolchains"
    shutil.rmtree(top / name)
    # What a crash leaves: the temp tree of a dead unpacker, here a "bash" that lies.
    for leftover in (f"{name}.0123456789ab.tmp", "0123abcd.ba9876543210.tmp"):
        fake = top / leftover / "root/usr/bin"
        fake.mkdir(parents=True)
        (fake / "bash").write_text("#!/bin/sh\necho poisoned\n")
        (fake / "bash").chmod(0o755)
    (ws / "g/BUILD.toml").write_text((ws / "g/BUILD.toml").read_text().replace("head -1 > $@", "head -n1 > $@"))
    result = pbuild("build", "//g:default", cwd=ws, timeout=600)
    assert result.code == 0, result
    assert (ws / "pbuild-out/g/default.txt").read_text().startswith("GNU bash")
    assert _trees(pbuild.cache) == [name]  # both leftovers removed, the tree made afresh


def _layer(tmp: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    blob = tmp / "layer.tar.gz"
    blob.write_bytes(gzip.compress(raw, mtime=0))
    return blob, "sha256:" + hashlib.sha256(raw).hexdigest()


def _meta(tmp: Path, diff_id: str) -> Path:
    meta = tmp / "layer.json"
    meta.write_text(json.dumps({"diff_id": diff_id, "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"}))
    return meta


def test_layers_are_stacked_and_checked_against_their_diff_id(tmp_path: Path) -> None:
    lower_dir, upper_dir = tmp_path / "lower", tmp_path / "upper"
    lower_dir.mkdir()
    upper_dir.mkdir()
    lower, lower_id = _layer(lower_dir, {"etc/a": b"lower", "etc/b": b"gone"})
    upper, upper_id = _layer(upper_dir, {"etc/a": b"upper", "etc/.wh.b": b""})
    trees = ToolchainTrees(str(tmp_path / "cache"))
    layers = [LayerFiles(str(lower), str(_meta(lower_dir, lower_id))),
              LayerFiles(str(upper), str(_meta(upper_dir, upper_id)))]
    root = Path(trees.tree("good", layers, label="//t:good"))
    assert (root / "etc/a").read_bytes() == b"upper" and not (root / "etc/b").exists()
    # A layer whose content is not what its sidecar promises is refused, and nothing is left.
    _meta(upper_dir, lower_id)
    with pytest.raises(BuildFailed, match=r"toolchain //t:bad: layer 2 of 2 .* is refused: layer content has digest"):
        trees.tree("bad", layers, label="//t:bad")
    # So is a damaged (truncated) blob.
    _meta(upper_dir, upper_id)
    upper.write_bytes(upper.read_bytes()[:-20])
    with pytest.raises(BuildFailed, match="toolchain //t:cut: layer 2 of 2"):
        trees.tree("cut", layers, label="//t:cut")
    assert sorted(n for n in os.listdir(tmp_path / "cache/toolchains") if not n.endswith(".lock")) == ["good"]


def _toolchain(digest_seed: str) -> Toolchain:
    blob = File(f"pbuild-out/tc/{digest_seed}/layer.tar.gz", is_source=False)
    meta = File(f"pbuild-out/tc/{digest_seed}/layer.json", is_source=False)
    return Toolchain(Label("tc", "shell"), (ToolchainLayer(blob, meta),), "")


def test_key_holds_the_toolchain_layers_and_no_host_fingerprint() -> None:
    def action(toolchain: Toolchain | None) -> ProcessAction:
        return ProcessAction(owner=Label("g", "x"), mnemonic="Genrule", argv=("/bin/bash", "-c", "true"),
                             inputs=(), outputs=(File("pbuild-out/g/x", is_source=False),), toolchain=toolchain)

    on_a = key_material(action(_toolchain("a")), {}, {}, {}, ["d1", "m1"])
    same_bytes_elsewhere = key_material(action(_toolchain("b")), {}, {}, {}, ["d1", "m1"])
    changed_layer = key_material(action(_toolchain("a")), {}, {}, {}, ["d2", "m1"])
    on_host = key_material(action(None), {}, {}, {})
    fingerprint = json.dumps(host_fingerprint())
    assert on_a == same_bytes_elsewhere  # content, not paths or labels
    assert on_a != changed_layer
    assert fingerprint.encode() not in on_a and fingerprint[1:-1].encode() not in on_a
    assert fingerprint[1:-1].encode() in on_host or fingerprint.encode() in on_host


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2 with file:line and target


GEN = """
[plain]
rule = "filegroup"
srcs = []

[gen]
rule = "genrule"
outs = ["x"]
cmd = "true > $@"
"""


@pytest.mark.parametrize(("build", "toml", "fragments"), [
    (GEN + 'toolchain = ":plain"\n', "", ["p/BUILD.toml:9", "target //p:gen", "//p:plain (a filegroup) is not a toolchain",
                                          "deb_packages or image"]),
    (GEN + 'toolchain = "//nope:x"\n', "", ["p/BUILD.toml:9", "target //p:gen", "no package //nope"]),
    (GEN + 'toolchain = ":missing"\n', "", ["p/BUILD.toml:9", "target //p:gen", "no target 'missing' in //p"]),
    (GEN + "toolchain = 3\n", "", ["p/BUILD.toml:9", "attribute 'toolchain' must be a label"]),
    (GEN, '[toolchains]\nshell = "//p:plain"\n', ["WORKSPACE.toml:5", "target //p:gen",
                                                 "[toolchains] shell (the default of genrule)", "is not a toolchain"]),
    (GEN, '[toolchains]\nshell = "//p:nothing"\n', ["WORKSPACE.toml:5", "target //p:gen", "no target 'nothing'"]),
    (GEN, '[toolchains]\n\nrust = "//p:plain"\n', ["WORKSPACE.toml:6", "unknown toolchain kind 'rust'", "python, shell"]),
    (GEN, "[toolchains]\nshell = 1\n", ["WORKSPACE.toml:5", "[toolchains] shell must be a label string"]),
    (GEN, '[toolchains]\nshell = "p:x y"\n', ["WORKSPACE.toml:5", "[toolchains] shell"]),
])
def test_bad_toolchain_input(workspace: WorkspaceFactory, pbuild: Runner, build: str, toml: str,
                             fragments: list[str]) -> None:
    ws = workspace({"p/BUILD.toml": build}, workspace_toml='[workspace]\nname = "fixture"\n\n' + toml)
    assert_user_error(pbuild("build", "//p:gen", cwd=ws), 2, *fragments)


def test_host_toolchain_default_keeps_fixture_workspaces_working(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace({"p/BUILD.toml": GEN}, workspace_toml='[workspace]\nname = "fixture"\n\n[toolchains]\nshell = "host"\n')
    result = pbuild("build", "//p:gen", cwd=ws)
    assert result.code == 0, result
    assert _trees(pbuild.cache) == []


PLUGIN = """
import os

from pbuild.engine.api import DefaultInfo, rule


def read_release(io, params):
    exec_root = os.path.join(io.tmpdir, "execroot")
    os.makedirs(exec_root)
    err = os.path.join(io.tmpdir, "stderr")
    code = io.run_sandboxed(["/bin/cat", "/etc/os-release"], exec_root=exec_root,
                            stdout_path=io.output_path(params["out"]), stderr_path=err)
    if code:
        raise RuntimeError(open(err).read())


@rule("release", attrs={}, doc="Writes the toolchain's /etc/os-release.", toolchain="shell")
def release(ctx):
    out = ctx.declare_file(ctx.label.name + ".txt")
    ctx.actions.call(read_release, version="1", params={"out": out.path}, inputs=(), outputs=(out,),
                     mnemonic="Release", toolchain=ctx.toolchain)
    return [DefaultInfo(files=(out,))]


RULES = [release]
"""


def test_in_process_action_runs_programs_of_its_toolchain(workspace: WorkspaceFactory, pbuild: Runner,
                                                          secret: Path) -> None:
    ws = _shell_workspace(workspace, secret, files={
        "rules.py": PLUGIN,
        "r/BUILD.toml": '[marked]\nrule = "release"\ntoolchain = "//tc:marked"\n\n[plain]\nrule = "release"\n',
    }, plugins='plugins = ["rules.py"]\n')
    result = pbuild("build", "//r:marked", "//r:plain", cwd=ws, timeout=600)
    assert result.code == 0, result
    assert (ws / "pbuild-out/r/marked.txt").read_text() == MARKED_OS_RELEASE
    assert "Debian GNU/Linux" in (ws / "pbuild-out/r/plain.txt").read_text()
    assert len(_trees(pbuild.cache)) == 2  # the image's tree and the shell's
