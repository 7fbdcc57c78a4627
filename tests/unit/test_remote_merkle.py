"""The input root, Command and Action of a remote execution, byte-checked against BuildGrid's
generated protobuf classes (the real peer's own encoding of the same messages)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pbuild.engine.errors import PbuildError
from pbuild.engine.hashing import digest_file
from pbuild.engine.remote import ExecInput, RemoteExecRequest, actionformat
from pbuild.engine.remote import _index as index_module
from pbuild.engine.remote._index import Sha256Index
from pbuild.engine.remote._merkle import MerkleBuilder

re_pb2 = pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")


def _input(tmp: Path, path: str, data: bytes, executable: bool = False) -> ExecInput:
    local = tmp / "blobs" / hashlib.sha256(data).hexdigest()
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    digest, size = digest_file(str(local))
    return ExecInput(path, str(local), digest, size, executable)


def _request(tmp: Path, **kw: object) -> RemoteExecRequest:
    fields: dict[str, object] = dict(
        label="//pkg:gen", mnemonic="Genrule", key_sha256="ab" * 32,
        argv=("/bin/bash", "-c", "cat $1 > $2", ""),
        env=(("PATH", "/usr/bin"), ("A", "1"), ("EMPTY", "")),
        workdir="pkg",
        output_files=("pbuild-out/pkg/out.txt", "pbuild-out/pkg/a.txt"),
        output_dirs=("pbuild-out/pkg/tree",),
        inputs=(_input(tmp, "pkg/src.txt", b"source\n"),
                _input(tmp, "pkg/tool.sh", b"#!/bin/sh\n", executable=True),
                _input(tmp, "pbuild-out/dep/gen.txt", b"generated\n"),
                _input(tmp, "pkg/same.txt", b"source\n")),
        empty_dirs=("pbuild-out/empty",),
        toolchain_layers=((_input(tmp, "tc/l0.tar", b"layer0"), _input(tmp, "tc/l0.json", b"{}")),
                          (_input(tmp, "tc/l1.tar", b"layer1"), _input(tmp, "tc/l1.json", b"{ }"))),
        host_fingerprint=None, timeout_s=12.5,
    )
    fields.update(kw)
    return RemoteExecRequest(**fields)  # type: ignore[arg-type]


def _walk(messages: dict[str, bytes], digest_hash: str, prefix: str = "") -> dict[str, tuple[str, int, bool]]:
    """Every file below a Directory (path -> sha256, size, executable), re-encoded by protobuf
    and compared with our bytes on the way; folders map to ("dir", 0, False)."""
    data = messages[digest_hash]
    assert hashlib.sha256(data).hexdigest() == digest_hash
    directory = re_pb2.Directory.FromString(data)
    assert directory.SerializeToString(deterministic=True) == data
    names = [n.name for n in directory.files] + [n.name for n in directory.directories]
    assert [n.name for n in directory.files] == sorted(n.name for n in directory.files)
    assert [n.name for n in directory.directories] == sorted(n.name for n in directory.directories)
    assert len(set(names)) == len(names)
    out: dict[str, tuple[str, int, bool]] = {}
    for f in directory.files:
        out[prefix + f.name] = (f.digest.hash, f.digest.size_bytes, f.is_executable)
    for d in directory.directories:
        out[prefix + d.name] = ("dir", 0, False)
        assert messages[d.digest.hash] and len(messages[d.digest.hash]) == d.digest.size_bytes or d.digest.size_bytes == 0
        out.update(_walk(messages, d.digest.hash, prefix + d.name + "/"))
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_messages_match_buildgrids_encoding(tmp_path: Path) -> None:
    request = _request(tmp_path)
    built = MerkleBuilder(Sha256Index(str(tmp_path / "cache"))).build(request)

    tree = _walk(built.messages, built.input_root_digest.hash)
    assert tree == {
        "pkg": ("dir", 0, False),
        "pkg/src.txt": (_sha(b"source\n"), 7, False),
        "pkg/same.txt": (_sha(b"source\n"), 7, False),
        "pkg/tool.sh": (_sha(b"#!/bin/sh\n"), 10, True),
        "pbuild-out": ("dir", 0, False),
        "pbuild-out/dep": ("dir", 0, False),
        "pbuild-out/dep/gen.txt": (_sha(b"generated\n"), 10, False),
        "pbuild-out/empty": ("dir", 0, False),
        ".pbuild": ("dir", 0, False),
        ".pbuild/toolchain": ("dir", 0, False),
        ".pbuild/toolchain/00": ("dir", 0, False),
        ".pbuild/toolchain/00/blob": (_sha(b"layer0"), 6, False),
        ".pbuild/toolchain/00/meta": (_sha(b"{}"), 2, False),
        ".pbuild/toolchain/01": ("dir", 0, False),
        ".pbuild/toolchain/01/blob": (_sha(b"layer1"), 6, False),
        ".pbuild/toolchain/01/meta": (_sha(b"{ }"), 3, False),
    }
    assert actionformat.layer_paths(1) == (".pbuild/toolchain/01/blob", ".pbuild/toolchain/01/meta")

    props = [re_pb2.Platform.Property(name=n, value=v) for n, v in actionformat.platform_properties(None)]
    assert [p.name for p in props] == sorted(p.name for p in props)
    assert {p.name: p.value for p in props}[actionformat.PROP_FORMAT] == actionformat.FORMAT_VERSION
    expected_command = re_pb2.Command(
        arguments=["/bin/bash", "-c", "cat $1 > $2", ""],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name=n, value=v)
                               for n, v in (("A", "1"), ("EMPTY", ""), ("PATH", "/usr/bin"))],
        output_files=["../pbuild-out/pkg/a.txt", "../pbuild-out/pkg/out.txt"],
        output_directories=["../pbuild-out/pkg/tree"],
        output_paths=["../pbuild-out/pkg/a.txt", "../pbuild-out/pkg/out.txt", "../pbuild-out/pkg/tree"],
        platform=re_pb2.Platform(properties=props),
        working_directory="pkg",
    )
    assert built.command == expected_command.SerializeToString(deterministic=True)
    assert built.command_digest.hash == _sha(built.command)
    expected_action = re_pb2.Action(
        command_digest=re_pb2.Digest(hash=built.command_digest.hash, size_bytes=len(built.command)),
        input_root_digest=re_pb2.Digest(hash=built.input_root_digest.hash,
                                        size_bytes=built.input_root_digest.size_bytes),
        platform=re_pb2.Platform(properties=props),
        do_not_cache=False,
    )
    expected_action.timeout.seconds = 12
    expected_action.timeout.nanos = 500_000_000
    assert built.action == expected_action.SerializeToString(deterministic=True)
    assert built.action_digest.hash == _sha(built.action) and built.messages[built.action_digest.hash] == built.action
    # Every file blob is named once, with where its bytes are here.
    assert {b.sha256 for b in built.files.values()} == {v[0] for v in tree.values() if v[0] != "dir"}
    for blob in built.files.values():
        assert _sha(Path(blob.path).read_bytes()) == blob.sha256
    assert {d.hash for d in built.digests()} == set(built.messages) | set(built.files)


def test_host_actions_carry_the_fingerprint_and_no_toolchain(tmp_path: Path) -> None:
    request = _request(tmp_path, toolchain_layers=(), host_fingerprint="x86_64|glibc 2.36|debian-12|3.11",
                       workdir="", timeout_s=None, output_dirs=(), empty_dirs=())
    built = MerkleBuilder(Sha256Index(str(tmp_path / "cache"))).build(request)
    assert not any(p.startswith(".pbuild") for p in _walk(built.messages, built.input_root_digest.hash))
    command = re_pb2.Command.FromString(built.command)
    assert list(command.output_paths) == ["pbuild-out/pkg/a.txt", "pbuild-out/pkg/out.txt"]
    assert command.working_directory == ""
    action = re_pb2.Action.FromString(built.action)
    assert not action.HasField("timeout")
    assert {p.name: p.value for p in action.platform.properties}[actionformat.PROP_HOST] == \
        "x86_64|glibc 2.36|debian-12|3.11"
    assert action.SerializeToString(deterministic=True) == built.action


def test_same_request_same_digests_and_nothing_hashed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    real = index_module.sha256_file

    def counting(path: str) -> tuple[str, int]:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(index_module, "sha256_file", counting)
    builder = MerkleBuilder(Sha256Index(str(tmp_path / "cache")))
    first = builder.build(_request(tmp_path))
    assert len(hashed) == 7  # seven distinct contents: the same bytes under two names are hashed once
    second = builder.build(_request(tmp_path, argv=("/bin/true",)))
    assert len(hashed) == 7
    assert second.input_root_digest == first.input_root_digest and second.action_digest != first.action_digest
    # A later build (a new index read from disk) hashes nothing either.
    builder._sha.save()
    MerkleBuilder(Sha256Index(str(tmp_path / "cache"))).build(_request(tmp_path))
    assert len(hashed) == 7


@pytest.mark.parametrize(("inputs", "message"), [
    (("../escape",), "cannot travel"),
    (("/abs",), "cannot travel"),
    (("a//b",), "cannot travel"),
    (("pkg/x", "pkg/x/y"), "is below"),
    ((".pbuild/toolchain/00/blob",), "reserved folder"),
])
def test_bad_input_paths_are_refused(tmp_path: Path, inputs: tuple[str, ...], message: str) -> None:
    request = _request(tmp_path, inputs=tuple(_input(tmp_path, p, p.encode()) for p in inputs))
    with pytest.raises(PbuildError) as info:
        MerkleBuilder(Sha256Index(str(tmp_path / "cache"))).build(request)
    assert message in info.value.message and "//pkg:gen" in info.value.message
