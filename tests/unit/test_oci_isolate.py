"""Heavy layer actions run in their own interpreter; results and user errors come back intact."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from pbuild.engine.api import ActionIO, Label
from pbuild.rules.debian.deb import DebError
from pbuild.rules.debian.rules import write_deb_layer

from tests.support.debfixtures import DebSpec, make_deb


def _io(tmp_path: Path, deb: bytes) -> tuple[ActionIO, dict[str, object]]:
    (tmp_path / "in.deb").write_bytes(deb)
    locked = {"name": "tool", "version": "1.0-1", "architecture": "amd64", "filename": "in.deb",
              "sha256": hashlib.sha256(deb).hexdigest()}
    io = ActionIO({"in.deb": str(tmp_path / "in.deb")},
                  {"l.tar.gz": str(tmp_path / "l.tar.gz"), "l.json": str(tmp_path / "l.json")},
                  str(tmp_path), Label("third_party/debian", "t"), jobs=2)
    params = {"debs": ["in.deb"], "codename": "bookworm", "release": "12.1", "exclude": [], "compression": "gzip",
              "level": 1, "epoch": 0, "blob": "l.tar.gz", "meta": "l.json", "packages": [locked]}
    return io, params


def test_layer_written_by_a_worker(tmp_path: Path) -> None:
    io, params = _io(tmp_path, make_deb(DebSpec("tool", files={"usr/bin/tool": b"#!/bin/sh\n"})))
    write_deb_layer(io, params)
    meta = json.loads((tmp_path / "l.json").read_text())
    assert meta["digest"].startswith("sha256:")
    assert [(p["name"], p["sha256"]) for p in meta["contents"]["packages"]] == [("tool", params["packages"][0]["sha256"])]
    with tarfile.open(tmp_path / "l.tar.gz") as tar:
        assert "usr/bin/tool" in tar.getnames()


def test_user_error_crosses_the_process_boundary(tmp_path: Path) -> None:
    io, params = _io(tmp_path, b"not an ar archive")
    with pytest.raises(DebError, match="in.deb is not a Debian package") as info:
        write_deb_layer(io, params)
    assert info.value.label == Label("third_party/debian", "t")


def test_profile_of_an_isolated_action(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pstats

    from pbuild.rules.oci.isolate import PROFILE_ENV

    io, params = _io(tmp_path, make_deb(DebSpec("tool", files={"usr/bin/tool": b"#!/bin/sh\n"})))
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "prof"))
    write_deb_layer(io, params)
    (dump,) = (tmp_path / "prof").glob("write_deb_layer-*.prof")
    assert any(name == "_write_deb_layer" for _, _, name in pstats.Stats(str(dump)).stats)  # type: ignore[attr-defined]
    assert (tmp_path / "l.tar.gz").exists()  # the action's work is done as without a profile
