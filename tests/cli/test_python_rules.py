"""CLI tests of the Python rules on the fixture workspace ``tests/fixtures/python_ws``.

pip runs for real but against a private index (a folder): the wheels of pbuild's built-in pytest
lock, downloaded once per session through the host's pip configuration, and tiny wheels made by
the tests. The workspace's own requirements have no pytest: py_test gets it as a tool. The lock
is made by ``pbuild lock --python`` once per session; each test builds in its own copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.debianlock import single_platform_lock
from tests.support.paths import FIXTURES, REPO
from tests.support.runner import Runner, assert_user_error, write_tree
from tests.support.wheelmaker import make_wheel

FIXTURE = FIXTURES / "python_ws"
LOCK = "third_party/python/requirements.lock"
BUILTIN_PYTEST_LOCK = REPO / "rules/builtin/python/pytest-cp311.lock"
TOOL_OVERRIDE = """
[python.tools.pytest]
lock = "third_party/python/pytest.lock"
"""


def _private_pip_env(index: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="session")
def private_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links folder with the wheels of pbuild's built-in pytest lock and tiny test wheels."""
    index = tmp_path_factory.mktemp("index")
    from pbuild.rules.python.config import PythonTarget

    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "--dest", str(index),
         *PythonTarget().pip_args(), "-r", str(BUILTIN_PYTEST_LOCK)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    make_wheel(str(index), "tinylib", "1.0", files={"tinylib/__init__.py": "def double(x):\n    return 2 * x\n"})
    make_wheel(str(index), "undeclared", "1.0")
    return index


@pytest.fixture(scope="session")
def locked_template(tmp_path_factory: pytest.TempPathFactory, private_index: Path) -> Path:
    """The fixture workspace with a lock made by `pbuild lock --python` against the private index."""
    root = tmp_path_factory.mktemp("template") / "ws"
    shutil.copytree(FIXTURE, root)
    runner = Runner(tmp_path_factory.mktemp("lock"))
    result = runner("lock", "--python", cwd=root, env=_private_pip_env(private_index))
    assert result.code == 0, str(result)
    assert "locked" in result.err
    return root


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per worker for the fetched and installed wheels (the cache is safe to share)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def ws(tmp_path: Path, locked_template: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(locked_template, root)
    return root


@pytest.fixture
def run(pbuild: Runner, private_index: Path, shared_cache: Path):
    """``run(ws, *args)``: the CLI with the private index and the shared cache."""

    def call(ws: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             cache: Path | None = None, timeout: float = 300):
        return pbuild(*args, cwd=cwd or ws, cache=cache or shared_cache,
                      env={**_private_pip_env(private_index), **(env or {})}, timeout=timeout)

    return call


def test_lock_generates_one_target_per_project_with_its_deps(locked_template: Path):
    from pbuild.rules.python.lockfile import parse_lock

    lock = parse_lock((locked_template / LOCK).read_text())
    projects = lock.by_name()
    assert set(projects) == {"tinylib", "undeclared"}  # pytest is pbuild's tool, not a requirement
    assert "file:" not in (locked_template / LOCK).read_text()


def test_lock_cli_without_a_wheel_for_the_platform(ws: Path, run, tmp_path: Path, private_index: Path):
    index = tmp_path / "index"
    shutil.copytree(private_index, index)
    make_wheel(str(index), "winonly", "1.0", tag="cp311-cp311-win_amd64")
    with open(ws / "third_party/python/requirements.in", "a") as handle:
        handle.write("winonly\n")
    before = (ws / LOCK).read_text()
    result = run(ws, "lock", "--python", env=_private_pip_env(index))
    assert_user_error(result, 2, "winonly", "manylinux_2_28_x86_64", "requirements.in")
    assert (ws / LOCK).read_text() == before


def test_a_later_build_needs_no_index(ws: Path, run, tmp_path: Path):
    first = run(ws, "build", "//lib:greet", "//third_party/python:tinylib")
    assert first.code == 0, str(first)
    assert run(ws, "clean").code == 0
    empty = tmp_path / "empty-index"
    empty.mkdir()
    again = run(ws, "run", "//bin:echo", env=_private_pip_env(empty))
    assert again.code == 0, str(again)
    assert "hello world x2" in again.out


def test_run_passes_args_env_exit_code_and_working_directory(ws: Path, run):
    result = run(ws, "run", "//bin:echo", "--", "one", "two", cwd=ws / "lib", env={"ECHO_EXIT": "3"})
    assert result.code == 3, str(result)
    lines = result.out.splitlines()
    assert "hello world x2" in lines
    assert "args: --baked one two" in lines
    assert "env: from-env" in lines
    assert f"cwd: {ws / 'lib'}" in lines
    assert f"workspace: {ws}" in lines


def test_run_gives_a_py_binary_every_word_after_the_target(ws: Path, run):
    """Docker's order: `pbuild run [OPTIONS] //bin:echo ARG...`; words that are run's own options
    (-v, --rm, -e) and a later -- are the program's; one -- right after the target is dropped."""
    result = run(ws, "run", "-q", "//bin:echo", "-v", "--rm", "--", "-e", "x")
    assert result.code == 0, str(result)
    assert "args: --baked -v --rm -- -e x" in result.out.splitlines()
    result = run(ws, "run", "//bin:echo", "--", "--", "-v")
    assert result.code == 0 and "args: --baked -- -v" in result.out.splitlines(), str(result)
    result = run(ws, "run", "-v", "/tmp:/x", "//bin:echo")
    assert_user_error(result, 125, "--volume: container options apply to an image, and //bin:echo is a program")


def test_run_passes_stdin_through(ws: Path, pbuild: Runner, private_index: Path, shared_cache: Path):
    proc = subprocess.run(
        pbuild.command(["run", "//bin:echo"]), cwd=ws, input="from stdin\n", capture_output=True, text=True,
        env=pbuild.env(shared_cache, _private_pip_env(private_index)), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stdin: from stdin" in proc.stdout.splitlines()


def test_py_test_passes_then_is_cached(ws: Path, run):
    first = run(ws, "test", "//lib:test_greet")
    assert first.code == 0, str(first)
    assert "//lib:test_greet  PASSED" in first.out
    second = run(ws, "test", "//lib:test_greet")
    assert second.code == 0, str(second)
    assert "//lib:test_greet  PASSED (cached)" in second.out


def test_failing_py_test_fails_and_shows_its_output(ws: Path, run):
    write_tree(ws, {"lib/test_bad.py": "def test_bad():\n    assert 1 + 1 == 3, 'arithmetic is broken'\n"})
    with open(ws / "lib/BUILD.toml", "a") as handle:
        handle.write('\n[test_bad]\nrule = "py_test"\nsrcs = ["test_bad.py"]\n')
    result = run(ws, "test", "//lib:all")
    assert result.code == 1, str(result)
    assert "//lib:test_bad  FAILED" in result.out
    assert "//lib:test_greet  PASSED" in result.out
    assert "arithmetic is broken" in result.out + result.err


def test_py_test_runs_pytest_from_the_builtin_tool_lock(ws: Path, run):
    # No pytest in the workspace's requirements or lock: it comes from //@pbuild/python:pytest.
    assert "pytest" not in (ws / "third_party/python/requirements.in").read_text()
    assert "pytest" not in (ws / LOCK).read_text()
    write_tree(ws, {"lib/test_bad.py": "def test_bad():\n    assert 1 + 1 == 3, 'arithmetic is broken'\n"})
    with open(ws / "lib/BUILD.toml", "a") as handle:
        handle.write('\n[test_bad]\nrule = "py_test"\nsrcs = ["test_bad.py"]\n')
    failing = run(ws, "test", "//lib:test_bad", "//lib:test_greet")
    assert failing.code == 1, str(failing)
    assert "//lib:test_bad  FAILED" in failing.out and "//lib:test_greet  PASSED" in failing.out
    assert "arithmetic is broken" in failing.out + failing.err
    passing = run(ws, "test", "//lib:test_greet")
    assert passing.code == 0, str(passing)
    tool_wheels = ws / "pbuild-out/@pbuild/python/pytest/wheels"
    assert (tool_wheels / "pytest-9.2.0-py3-none-any.whl").is_file()
    assert (tool_wheels / "pluggy-1.7.0-py3-none-any.whl").is_file()


def test_workspace_tool_lock_overrides_the_builtin(ws: Path, run, tmp_path: Path, private_index: Path):
    # A "pytest" of the workspace's own that passes everything: if it is used, a failing test passes.
    index = tmp_path / "index"
    shutil.copytree(private_index, index)
    make_wheel(str(index), "pytest", "0.1", files={
        "pytest/__init__.py": "def main(args):\n    print('workspace pytest 0.1 ran')\n    return 0\n"})
    write_tree(ws, {
        "third_party/python/pytest.in": "pytest==0.1\n",
        "lib/test_bad.py": "def test_bad():\n    assert False\n",
    })
    with open(ws / "lib/BUILD.toml", "a") as handle:
        handle.write('\n[test_bad]\nrule = "py_test"\nsrcs = ["test_bad.py"]\n')
    with open(ws / "WORKSPACE.toml", "a") as handle:
        handle.write(TOOL_OVERRIDE + 'requirements = "third_party/python/pytest.in"\n')
    locked = run(ws, "lock", "--tools", env=_private_pip_env(index))
    assert locked.code == 0, str(locked)
    from pbuild.rules.python.lockfile import parse_lock

    lock = parse_lock((ws / "third_party/python/pytest.lock").read_text())
    assert [(p.name, p.version) for p in lock.projects] == [("pytest", "0.1")]
    result = run(ws, "test", "//lib:test_bad", env=_private_pip_env(index))
    assert result.code == 0, str(result)
    assert "//lib:test_bad  PASSED" in result.out


def test_a_project_both_locks_pin_comes_from_the_users_lock(ws: Path, run):
    # pytest's lock and the workspace's both pin packaging: one copy, the workspace's, is used.
    with open(ws / "third_party/python/requirements.in", "a") as handle:
        handle.write("packaging\n")
    assert run(ws, "lock", "--python").code == 0
    write_tree(ws, {"lib/test_mine.py": """
        import packaging

        def test_mine():
            assert "/third_party/python/site/packaging/" in packaging.__file__, packaging.__file__
    """})
    with open(ws / "lib/BUILD.toml", "a") as handle:
        handle.write('\n[test_mine]\nrule = "py_test"\nsrcs = ["test_mine.py"]\n'
                     'deps = ["//third_party/python:packaging"]\n')
    result = run(ws, "test", "//lib:test_mine")
    assert result.code == 0, str(result)
    assert "//lib:test_mine  PASSED" in result.out


def test_lock_tools_honours_the_workspace_python(ws: Path, run):
    toml = (ws / "WORKSPACE.toml").read_text().replace('"3.11"', '"3.12"').replace('"cp311"', '"cp312"')
    (ws / "WORKSPACE.toml").write_text(toml + TOOL_OVERRIDE)
    result = run(ws, "lock", "--tools")
    assert result.code == 0, str(result)
    text = (ws / "third_party/python/pytest.lock").read_text()
    assert "# pbuild-target: cp312 abi cp312 on manylinux_2_28_x86_64" in text
    assert "pytest==9.2.0" in text and "://" not in text


def test_tool_lock_hash_mismatch_names_the_file_and_both_hashes(ws: Path, run, tmp_path: Path):
    text = BUILTIN_PYTEST_LOCK.read_text()
    good = text[text.index("pluggy=="):].split("--hash=sha256:", 1)[1][:64]
    bad = hashlib.sha256(b"not pluggy").hexdigest()
    (ws / "third_party/python/pytest.lock").write_text(text.replace(good, bad))
    with open(ws / "WORKSPACE.toml", "a") as handle:
        handle.write(TOOL_OVERRIDE)
    result = run(ws, "test", "//lib:test_greet", cache=tmp_path / "fresh-cache")
    assert result.code == 1, str(result)
    assert "Traceback" not in result.err + result.out
    assert "pluggy-1.7.0-py3-none-any.whl" in result.err
    assert good in result.err and bad in result.err
    assert "./pbuild lock --tools" in result.err


def test_no_builtin_tool_lock_for_the_interpreter(ws: Path, run):
    toml = (ws / "WORKSPACE.toml").read_text().replace('"3.11"', '"3.9"').replace('"cp311"', '"cp39"')
    (ws / "WORKSPACE.toml").write_text(toml)
    write_tree(ws, {"alone/BUILD.toml": '[t]\nrule = "py_test"\nsrcs = ["test_alone.py"]\n',
                    "alone/test_alone.py": "def test_ok():\n    pass\n"})
    result = run(ws, "build", "//alone:t")
    assert_user_error(result, 2, "no built-in pytest lock for cp39", "[python.tools.pytest]",
                      "./pbuild lock --tools")


def test_import_of_an_undeclared_package_fails(ws: Path, run):
    # `undeclared` is locked and its wheel is in the cache, but this test does not depend on it;
    # nor on //lib:greet, whose source sits in the workspace.
    write_tree(ws, {"lib/test_strict.py": """
        def test_wheel():
            import undeclared  # noqa: F401

        def test_source():
            import lib.greet  # noqa: F401
    """})
    with open(ws / "lib/BUILD.toml", "a") as handle:
        handle.write('\n[test_strict]\nrule = "py_test"\nsrcs = ["test_strict.py"]\n')
    result = run(ws, "test", "//lib:test_strict")
    assert result.code == 1, str(result)
    output = result.out + result.err
    assert "No module named 'undeclared'" in output
    assert "No module named 'lib.greet'" in output or "No module named 'lib'" in output


def test_main_not_in_srcs_is_a_user_error(ws: Path, run):
    write_tree(ws, {"bin/other.py": "print('other')\n"})
    with open(ws / "bin/BUILD.toml", "a") as handle:
        handle.write('\n[wrong]\nrule = "py_binary"\nsrcs = ["echo.py"]\nmain = "other.py"\n')
    result = run(ws, "build", "//bin:wrong")
    assert_user_error(result, 2, "bin/BUILD.toml", "other.py is not in srcs", "//bin:wrong")


def test_missing_lock_says_how_to_fix(ws: Path, run):
    (ws / LOCK).unlink()
    result = run(ws, "build", "//lib:greet")
    assert_user_error(result, 2, "requirements.lock does not exist", "pbuild lock --python")


def test_lock_out_of_date_with_requirements_in(ws: Path, run):
    with open(ws / "third_party/python/requirements.in", "a") as handle:
        handle.write("numpy\n")
    result = run(ws, "build", "//lib:greet")
    assert_user_error(result, 2, "out of date", "pbuild lock --python")


def test_lock_made_for_another_platform(ws: Path, run):
    toml = (ws / "WORKSPACE.toml").read_text().replace("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
    (ws / "WORKSPACE.toml").write_text(toml)
    result = run(ws, "build", "//lib:greet")
    assert_user_error(result, 2, "manylinux_2_28_aarch64", "pbuild lock --python")


def test_hash_mismatch_names_the_file_and_both_hashes(ws: Path, run, tmp_path: Path):
    text = (ws / LOCK).read_text()
    start = text.index("tinylib==")
    good = text[start:].split("--hash=sha256:", 1)[1][:64]
    bad = hashlib.sha256(b"not the wheel").hexdigest()
    (ws / LOCK).write_text(text.replace(good, bad))
    result = run(ws, "build", "//third_party/python:tinylib", cache=tmp_path / "fresh-cache")
    assert result.code != 0, str(result)
    assert "Traceback" not in result.err
    assert "tinylib-1.0-py3-none-any.whl" in result.err
    assert good in result.err and bad in result.err


def test_no_wheel_for_the_target_platform_at_fetch(ws: Path, run, tmp_path: Path, private_index: Path):
    # The lock names tinylib 1.0, but this index only has a Windows build of it now.
    index = tmp_path / "index"
    shutil.copytree(private_index, index)
    (index / "tinylib-1.0-py3-none-any.whl").unlink()
    make_wheel(str(index), "tinylib", "1.0", tag="cp311-cp311-win_amd64")
    result = run(ws, "build", "//third_party/python:tinylib", cache=tmp_path / "fresh-cache",
                 env=_private_pip_env(index))
    assert result.code != 0, str(result)
    assert "Traceback" not in result.err
    assert "tinylib==1.0" in result.err and "manylinux_2_28_x86_64" in result.err


def test_imports_and_prefix_map_sources_to_import_paths(ws: Path, run):
    write_tree(ws, {
        "src/BUILD.toml": """
            [flat]
            rule = "py_library"
            srcs = ["helpers/flat.py"]
            data = ["helpers/words.txt"]
            imports = ["helpers"]

            [prefixed]
            rule = "py_library"
            srcs = ["core/thing.py"]
            prefix = "brand"

            [show]
            rule = "py_binary"
            srcs = ["show.py"]
            deps = [":flat", ":prefixed"]
        """,
        "src/helpers/flat.py": "NAME = 'flat'\n",
        "src/helpers/words.txt": "data beside the code\n",
        "src/core/thing.py": "NAME = 'thing'\n",
        "src/show.py": """
            import os
            import flat
            import src.helpers.flat
            from brand.src.core import thing
            print(flat.NAME, src.helpers.flat.NAME, thing.NAME)
            with open(os.path.join(os.path.dirname(flat.__file__), "words.txt")) as handle:
                print(handle.read().strip())
        """,
    })
    result = run(ws, "run", "//src:show")
    assert result.code == 0, str(result)
    assert result.out.splitlines() == ["flat flat thing", "data beside the code"]


@pytest.mark.slow
def test_pex_is_reproducible_and_runs(tmp_path: Path, locked_template: Path, run):
    digests = []
    for name in ("one", "two"):
        root = tmp_path / name / "ws"
        shutil.copytree(locked_template, root)
        result = run(root, "build", "//bin:echo", cache=tmp_path / f"cache-{name}")
        assert result.code == 0, str(result)
        pex = root / "pbuild-out/bin/echo.pex"
        digests.append(hashlib.sha256(pex.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert str(tmp_path).encode() not in pex.read_bytes()
    env = {"PATH": os.environ["PATH"], "PEX_ROOT": str(tmp_path / "pex-root"), "ECHO_EXIT": "0"}
    proc = subprocess.run([str(pex), "extra"], input="", capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hello world x2" in proc.stdout
    assert "args: --baked extra" in proc.stdout
    assert "env: from-env" in proc.stdout


_WHERE = '''"""Reports what the program sees of the machine it runs on."""
import os
import sys

print("python:", sys.executable, sys.version_info[:2])
print("host secret visible:", os.path.exists(os.environ["HOST_SECRET"]))
print("cwd:", os.getcwd())
'''


def _on_python_toolchain(ws: Path, secret: Path) -> None:
    """Make ``ws`` run its Python targets on the repository's own interpreter packages."""
    (ws / "third_party/debian").mkdir()
    (ws / "third_party/debian/debian.lock.json").write_text(single_platform_lock())
    (ws / "third_party/debian/BUILD.toml").write_text(
        '[python3]\nrule = "deb_packages"\n'
        'packages = ["python3.11-minimal", "libpython3.11-stdlib", "ca-certificates", "libstdc++6"]\n'
        'suites = ["bookworm", "bookworm-updates"]\n')
    with open(ws / "WORKSPACE.toml", "a") as handle:
        handle.write('\n[toolchains]\npython = "//third_party/debian:python3"\n')
    write_tree(ws, {"bin/where.py": _WHERE, "bin/BUILD.toml": (ws / "bin/BUILD.toml").read_text()
                    + f'\n[where]\nrule = "py_binary"\nsrcs = ["where.py"]\nenv = {{ HOST_SECRET = "{secret}" }}\n'})
    secret.write_text("the host's\n")


def test_py_test_on_the_python_toolchain(ws: Path, run, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    _on_python_toolchain(ws, secret)
    with open(ws / "lib/test_greet.py", "a") as handle:
        handle.write(f"\n\ndef test_runs_on_the_toolchain():\n    import os\n\n"
                     f"    assert not os.path.exists({str(secret)!r})\n")
    result = run(ws, "test", "//lib:test_greet", timeout=600)
    assert result.code == 0, str(result)
    assert "//lib:test_greet  PASSED" in result.out


def test_run_on_the_python_toolchain(ws: Path, run, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    _on_python_toolchain(ws, secret)
    result = run(ws, "run", "//bin:where", cwd=ws / "lib", timeout=600)
    assert result.code == 0, str(result)
    assert "python: /usr/bin/python3.11 (3, 11)" in result.out
    assert "host secret visible: False" in result.out  # the toolchain's root, not the host's
    assert f"cwd: {ws / 'lib'}" in result.out
    again = run(ws, "run", "//bin:where", cwd=ws / "lib")  # the no-op path replays the same plan
    assert again.out == result.out, str(again)
