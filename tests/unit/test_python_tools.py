"""Unit tests of pbuild's built-in Python tools (rules/python/tools.py) and their shipped locks.

The CLI side (a py_test with no pytest in the requirements, the workspace override, a hash
mismatch) is in test_python_rules.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pbuild.engine.errors import WorkspaceError
from pbuild.engine.workspace import builtin_root, package_dir
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.lockfile import Lock, LockedProject, inputs_digest, parse_lock
from pbuild.rules.python.tools import TOOLS, builtin_lock_name, lock_fits, read_tool_source

from tests.support.paths import REPO

BUILTIN = REPO / "rules" / "builtin" / "python"


def test_builtin_packages_are_read_from_pbuild_not_the_workspace(tmp_path: Path):
    assert Path(builtin_root()).resolve() == (REPO / "rules" / "builtin").resolve()
    assert Path(package_dir(str(tmp_path), "@pbuild/python")).resolve() == BUILTIN.resolve()
    assert package_dir(str(tmp_path), "@pbuildx/python") == str(tmp_path / "@pbuildx/python")
    assert package_dir(str(tmp_path), "") == str(tmp_path)


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_each_shipped_lock_is_current_pure_and_names_no_host(version: str):
    target = PythonTarget(version=version, abi="cp" + version.replace(".", ""))
    for tool in TOOLS:
        text = (BUILTIN / builtin_lock_name(tool, target)).read_text()
        lock = parse_lock(text)
        assert lock.inputs_sha256 == inputs_digest((BUILTIN / f"{tool}.in").read_text())
        assert lock.target == target.describe()
        assert {"pytest", "pluggy", "iniconfig", "packaging"} <= set(lock.by_name())
        assert all(p.filename.endswith("-none-any.whl") for p in lock.projects)
        assert "://" not in text and str(REPO) not in text


def test_self_hosted_pbuild_ships_every_builtin_file():
    # //:pbuild (pbuild built by itself) must carry its built-in packages, as the wheel does.
    data = set(tomllib.loads((REPO / "BUILD.toml").read_text())["pbuild_lib"]["data"])
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "rules" / "builtin").rglob("*") if p.is_file()}
    assert shipped == data


def _lock(target: str, *filenames: str) -> Lock:
    projects = tuple(LockedProject(name=f.split("-")[0], version="1", filename=f, sha256="0" * 64)
                     for f in filenames)
    return Lock(inputs_sha256="x", target=target, projects=projects)


def test_a_pure_lock_serves_every_platform_of_its_interpreter():
    x86 = PythonTarget()
    arm = PythonTarget(platform="manylinux_2_28_aarch64")
    pure = _lock(x86.describe(), "pytest-9.2.0-py3-none-any.whl")
    assert lock_fits(pure, x86) and lock_fits(pure, arm)
    assert not lock_fits(pure, PythonTarget(version="3.12", abi="cp312"))
    binary = _lock(x86.describe(), "pytest-9.2.0-py3-none-any.whl", "numpy-2-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert lock_fits(binary, x86) and not lock_fits(binary, arm)


def test_tool_override_is_read_from_python_tools():
    table = {"version": "3.11", "tools": {"pytest": {"lock": "third_party/python/pytest.lock"}}}
    PythonTarget.from_config(table)  # [python] accepts the tools sub-table
    source = read_tool_source(table, "pytest")
    assert (source.lock, source.requirements) == ("third_party/python/pytest.lock", "")
    assert read_tool_source({}, "pytest").lock == ""


def test_bad_tool_tables_report_every_problem_at_once():
    table = {"tools": {"pyest": {}, "pytest": {"lok": "x", "requirements": "/abs/pytest.in"}}}
    with pytest.raises(WorkspaceError) as caught:
        read_tool_source(table, "pytest")
    message = caught.value.message
    for fragment in ("unknown tool 'pyest'", "unknown key 'lok'", "must be a path inside the workspace",
                     "needs lock"):
        assert fragment in message
