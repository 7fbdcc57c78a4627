"""The build epoch: SOURCE_DATE_EPOCH is validated before a build starts and passed on as a number."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbuild.lib import determinism

from tests.support.runner import Runner, assert_user_error, write_tree

_SDE_BUILD = '[sde]\nrule = "genrule"\nouts = ["sde.out"]\ncmd = "echo \\"[$$SOURCE_DATE_EPOCH]\\" > $@"\n'


@pytest.mark.parametrize("bad", ["yesterday", "-1", "1.5"])
def test_a_bad_epoch_is_refused_before_anything_is_built(tmp_path: Path, pbuild: Runner, bad: str) -> None:
    root = tmp_path / "ws"
    write_tree(root, {"WORKSPACE.toml": "", "p/BUILD.toml": _SDE_BUILD})
    result = pbuild("build", "//p:sde", cwd=root, env={"SOURCE_DATE_EPOCH": bad})
    assert_user_error(result, 2, f"SOURCE_DATE_EPOCH={bad!r} is not a non-negative integer", "git log -1")
    assert not (root / "pbuild-out" / "p" / "sde.out").exists()


def test_actions_see_the_validated_epoch_not_the_raw_variable(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {"WORKSPACE.toml": "", "p/BUILD.toml": _SDE_BUILD})
    out = root / "pbuild-out" / "p" / "sde.out"
    result = pbuild("build", "//p:sde", cwd=root, env={"SOURCE_DATE_EPOCH": " 1700000000\n"})
    assert result.code == 0, str(result)
    assert out.read_text() == "[1700000000]\n"
    # The same epoch spelled without the blanks is the same build: its action comes from the cache.
    result = pbuild("build", "//p:sde", cwd=root, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.code == 0, str(result)
    assert "1 action: 1 cached" in result.err, str(result)


def test_zip_epoch_is_the_build_epoch_but_not_before_1980() -> None:
    assert determinism.zip_epoch(0) == determinism.ZIP_EPOCH_FLOOR == 315532800  # 1980-01-01T00:00:00Z
    assert determinism.rfc3339(determinism.ZIP_EPOCH_FLOOR) == "1980-01-01T00:00:00Z"
    assert determinism.zip_epoch(1700000000) == 1700000000
