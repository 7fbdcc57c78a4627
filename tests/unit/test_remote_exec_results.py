"""What a worker's ActionResult may name: paths inside the exec root, Trees of plain single names.
Anything else is refused with a message that says what and where."""

from __future__ import annotations

import hashlib

import pytest
from pbuild.engine.remote import RemoteExecRequest, RemoteOutput
from pbuild.engine.remote._base import Corrupt
from pbuild.engine.remote._exec import GrpcRemoteExecutor
from pbuild.engine.remote._execwire import Directory, DirectoryNode, FileNode, SymlinkNode
from pbuild.engine.remote._wire import Digest

SHA = hashlib.sha256(b"x").hexdigest()


def _request(workdir: str = "pkg") -> RemoteExecRequest:
    return RemoteExecRequest(label="//pkg:gen", mnemonic="Genrule", key_sha256="ab" * 32, argv=("true",), env=(),
                             workdir=workdir, output_files=(), output_dirs=(), inputs=(), empty_dirs=(),
                             toolchain_layers=(), host_fingerprint=None, timeout_s=None)


def test_result_paths_are_relative_to_the_working_directory() -> None:
    assert GrpcRemoteExecutor._path("../pbuild-out/pkg/x", _request()) == "pbuild-out/pkg/x"
    assert GrpcRemoteExecutor._path("pbuild-out/pkg/x", _request("")) == "pbuild-out/pkg/x"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a\0b"])
def test_paths_leaving_the_exec_root_are_refused(path: str) -> None:
    with pytest.raises(Corrupt, match="outside the exec root"):
        GrpcRemoteExecutor._path(path, _request("pkg" if path != "." else ""))


def _digest(directory: Directory) -> Digest:
    data = directory.encode()
    return Digest(hashlib.sha256(data).hexdigest(), len(data))


def test_a_tree_flattens_into_its_files() -> None:
    sub = Directory(files=(FileNode("f", Digest(SHA, 1), True),))
    root = Directory(files=(FileNode("a", Digest(SHA, 1)),), directories=(DirectoryNode("sub", _digest(sub)),))
    out = sorted(GrpcRemoteExecutor._flatten("pbuild-out/t", (root, {_digest(sub).hash: sub})), key=lambda o: o.path)
    assert out == [RemoteOutput("pbuild-out/t/a", SHA, 1, False), RemoteOutput("pbuild-out/t/sub/f", SHA, 1, True)]


@pytest.mark.parametrize(("root", "children", "message"), [
    (Directory(files=(FileNode("..", Digest(SHA, 1)),)), {}, "the name '..'"),
    (Directory(files=(FileNode("a/b", Digest(SHA, 1)),)), {}, "single path components"),
    (Directory(files=(FileNode("", Digest(SHA, 1)),)), {}, "an empty name"),
    (Directory(files=(FileNode("a", Digest(SHA, 1)), FileNode("a", Digest(SHA, 1)))), {}, "names 'a' twice"),
    (Directory(files=(FileNode("a", Digest("XYZ", 1)),)), {}, "malformed digest"),
    (Directory(symlinks=(SymlinkNode("l", "/etc"),)), {}, "holds a symlink 'l'"),
    (Directory(directories=(DirectoryNode("d", Digest(SHA, 1)),)), {}, "pbuild-out/t/d is not in the Tree"),
])
def test_hostile_trees_are_refused(root: Directory, children: dict[str, Directory], message: str) -> None:
    with pytest.raises(Corrupt) as info:
        list(GrpcRemoteExecutor._flatten("pbuild-out/t", (root, children)))
    assert message in str(info.value) and "pbuild-out/t" in str(info.value)


def test_a_tree_that_loops_is_refused() -> None:
    # A child naming itself: a cycle only a hostile server can build (digests make it impossible
    # honestly); the depth limit ends it.
    fake = Digest(SHA, 1)
    loop = Directory(directories=(DirectoryNode("again", fake),))
    with pytest.raises(Corrupt, match="deeper than 256"):
        list(GrpcRemoteExecutor._flatten("pbuild-out/t", (loop, {SHA: loop})))
