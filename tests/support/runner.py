"""A runner for the real ``pbuild`` CLI, fixture workspaces written in tmp_path, and checks of what a
build left behind (outputs, cache consistency).

Every CLI test runs ``python -m pbuild.engine.cli`` as a subprocess with its own cache dir and
config dir, so tests never share state and run safely under ``pytest -n auto``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PBUILD = (sys.executable, "-m", "pbuild.engine.cli")
SUMMARY_LINE = re.compile(
    r"^(\d+) actions?: (?:nothing to do|(?:\d+ (?:cached|remote cached|executed|remote executed|failed)(?:, )?)+) in \d+\.\d\d s$",
    re.M,
)


@dataclass(frozen=True)
class Result:
    """What one pbuild process did."""

    code: int
    out: str
    err: str
    argv: tuple[str, ...]

    def __str__(self) -> str:  # shown by pytest when an assertion on the result fails
        return f"pbuild {' '.join(self.argv)} -> {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"

    @property
    def summary(self) -> str:
        """The closing ``N actions: ...`` line."""
        matches = list(SUMMARY_LINE.finditer(self.err))
        assert matches, f"no summary line in:\n{self}"
        return matches[-1].group(0)


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    """Write ``files`` (relative path -> text, dedented, or bytes) below ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"))


WorkspaceFactory = Callable[..., Path]
GuardedBuild = Callable[[Path], "Guard"]


def base_env(tmp: Path) -> dict[str, str]:
    """The environment of a pbuild subprocess: no user config, no inherited cache or remote settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBUILD_", "PYTEST_", "SOURCE_DATE_EPOCH"))}
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    env.pop("XDG_CACHE_HOME", None)
    return env


class Runner:
    """Runs the real CLI: ``pbuild("build", "//a:x", cwd=ws)`` returns a :class:`Result`.

    The cache dir is ``cache`` (default ``tmp_path/cache``), passed as ``$PBUILD_CACHE`` so that
    the exact argv a user would type is tested; pass ``--cache-dir`` yourself to test the flag.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cache = tmp / "cache"

    def command(self, args: Sequence[str]) -> list[str]:
        return [*PBUILD, *args]

    def env(self, cache: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = base_env(self.tmp)
        env["PBUILD_CACHE"] = str(cache or self.cache)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, cwd: Path, cache: Path | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 120, prefix: Sequence[str] = (), umask: int = -1) -> Result:
        proc = subprocess.run(
            [*prefix, *self.command(args)],
            cwd=cwd,
            env=self.env(cache, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            umask=umask,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, tuple(args))

    def popen(self, *args: str, cwd: Path, cache: Path | None = None, env: Mapping[str, str] | None = None,
              **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            self.command(args), cwd=cwd, env=self.env(cache, env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, **kwargs,
        )


def assert_user_error(result: Result, code: int, *fragments: str) -> None:
    """A user error: the exit code, every fragment in stderr, and no Python traceback."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.err and "Traceback" not in result.out, str(result)
    assert "error:" in result.err, str(result)
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} missing from stderr\n{result}"


def tree_digest(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file below ``root``: relative path -> (content, mode bits)."""
    found: dict[str, tuple[bytes, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            found[path.relative_to(root).as_posix()] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return found


def cache_is_consistent(cache: Path) -> list[str]:
    """Problems in a cache dir: CAS blobs whose content does not match their name, temp files left over."""
    from pbuild.engine.hashing import digest_file

    problems = []
    for blob in (cache / "cas").rglob("*"):
        if blob.is_dir():
            continue
        if blob.name.endswith(".tmp"):
            problems.append(f"temp file {blob}")
            continue
        name = blob.name.removesuffix(".x")
        digest, _ = digest_file(str(blob))
        if digest != name:
            problems.append(f"damaged blob {blob}")
    for entry in (cache / "ac").rglob("*.tmp"):
        problems.append(f"temp file {entry}")
    return problems


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for path in root.rglob("*"):
        os.chown(path, uid, gid, follow_symlinks=False)


SETPRIV_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


# A package that builds; bad-input tests build it first and check afterwards that nothing was lost.
GOOD_PACKAGE: dict[str, str | bytes] = {
    "good/BUILD.toml": """
        [x]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["x.txt"]
        cmd = "cp $< $@"
    """,
    "good/in.txt": "good input\n",
}


class Guard:
    """Outputs and cache of a workspace after a good build, to check a later failure lost nothing."""

    def __init__(self, ws: Path, cache: Path) -> None:
        self.ws = ws
        self.cache = cache
        self.outputs = tree_digest(ws / "pbuild-out")
        assert self.outputs, "the good build produced nothing"

    def assert_intact(self) -> None:
        assert tree_digest(self.ws / "pbuild-out") == self.outputs
        assert cache_is_consistent(self.cache) == []
