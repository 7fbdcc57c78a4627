"""The machine's errors as messages: a full disk wherever it strikes (an
in-process action, a sandboxed one, materializing into pbuild-out), a read-only cache, an
unreadable user config. Real small filesystems: a size-limited tmpfs mounted in a user+mount
namespace, so the tests need no root and leave no mount behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.runner import (
    SETPRIV_NOBODY,
    Result,
    Runner,
    WorkspaceFactory,
    assert_user_error,
    chown_tree,
)

BIG = 3_000_000  # bytes; the tmpfs below holds 1 MB

FULL_WS = {
    "p/BUILD.toml": f"""
        [layer]
        rule = "layer"
        srcs = ["big.bin"]
        compression = "none"

        [gen]
        rule = "genrule"
        outs = ["gen.bin"]
        cmd = "head -c {BIG} /dev/urandom > $@"
    """,
}


def _needs_unshare() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed (Debian package util-linux)")


def _on_small_tmpfs(folder: Path, *, then: str = "") -> list[str]:
    """A prefix that runs the command with a 1 MB tmpfs on ``folder`` (in a new user and mount
    namespace), then runs ``then`` (a shell line, to look at the tmpfs before it goes away)."""
    script = f'mount -t tmpfs -o size=1m pbuild-test "$0" && "$@"; code=$?; {then or ":"}; exit $code'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folder)]


def _leftovers(cache: Path, report: Path) -> str:
    """A shell line writing every temp file, AC entry, CAS blob and work folder of ``cache`` to ``report``."""
    return f"(cd {cache} && find . -name '*.tmp' -o -path './ac/*' -o -path './cas/*' -o -path './tmp/*') > {report}"


@pytest.mark.parametrize("target", ["layer", "gen"])
def test_a_full_cache_disk_is_a_clear_failure(target: str, workspace: WorkspaceFactory, pbuild: Runner,
                                              tmp_path: Path) -> None:
    """A full cache disk under an in-process action (Layer) or a sandboxed one (whose own complaint
    cannot fit in its log there) is a build failure, exit 1, that names what is full; not "a bug in
    pbuild"."""
    _needs_unshare()
    root = workspace(FULL_WS)
    (root / "p" / "big.bin").write_bytes(os.urandom(BIG))
    cache, report = tmp_path / "small-cache", tmp_path / "leftovers"
    cache.mkdir()
    result = pbuild("build", f"//p:{target}", cwd=root, cache=cache,
                    prefix=_on_small_tmpfs(cache, then=_leftovers(cache, report)))
    assert_user_error(result, 1, f"target //p:{target}", f"no space left on pbuild-test mounted at {cache}",
                      "build failed: 1 action(s) failed")
    assert "crashed" not in result.err and "bug in" not in result.err
    # Nothing half-written: no temp files, no action cache entry, no blob, no work folder left.
    assert report.read_text() == ""


def test_a_full_workspace_disk_while_materializing(workspace: WorkspaceFactory, pbuild: Runner,
                                                   tmp_path: Path) -> None:
    """The cache has room; pbuild-out (on a 1 MB tmpfs) has not: the copy out of the CAS fails."""
    _needs_unshare()
    root = workspace(FULL_WS)
    out = root / "pbuild-out"
    out.mkdir()
    report = tmp_path / "leftovers"
    result = pbuild("build", "//p:gen", cwd=root,
                    prefix=_on_small_tmpfs(out, then=f"find {out} -name '*.tmp' > {report}"))
    assert_user_error(result, 1, "target //p:gen", f"no space left on pbuild-test mounted at {out}",
                      f"writing {out}/p/gen.bin\n")
    assert report.read_text() == ""  # the half-copied temp file is gone


# -- permissions ---------------------------------------------------------------------------------


def _as_nobody(base: Path, ws: Path, *args: str) -> Result:
    return Runner(base)(*args, cwd=ws, cache=base / "cache", prefix=SETPRIV_NOBODY)


def test_a_read_only_cache_is_a_message(nobody_dir: Path) -> None:
    ws = nobody_dir / "ws"
    ws.mkdir()
    (ws / "WORKSPACE.toml").write_text("")
    (ws / "p").mkdir()
    (ws / "p" / "BUILD.toml").write_text('[x]\nrule = "genrule"\nouts = ["x.txt"]\ncmd = "echo 1 > $@"\n')
    chown_tree(nobody_dir, 65534, 65534)
    assert _as_nobody(nobody_dir, ws, "build", "//p:x").code == 0
    cache = nobody_dir / "cache"
    (cache / "index").chmod(0o555)  # only the per-workspace indexes are read-only
    (ws / "p" / "BUILD.toml").write_text('[x]\nrule = "genrule"\nouts = ["x.txt"]\ncmd = "echo 2 > $@"\n')
    result = _as_nobody(nobody_dir, ws, "build", "//p:x")
    assert_user_error(result, 2, f"Permission denied: {cache}/index/",
                      f"hint: the cache dir {cache} must be writable by you")
    for folder in (cache, *cache.iterdir()):
        folder.chmod(0o555)  # all of it
    result = _as_nobody(nobody_dir, ws, "build", "//p:x")
    assert_user_error(result, 2, f"cannot use cache dir {cache}: Permission denied", "--cache-dir DIR")


def test_a_read_only_filesystem_under_the_cache_as_root(workspace: WorkspaceFactory, pbuild: Runner,
                                                        tmp_path: Path) -> None:
    """Root may write anywhere, except on a read-only mount (EROFS)."""
    _needs_unshare()
    root = workspace({"p/BUILD.toml": '[x]\nrule = "genrule"\nouts = ["x.txt"]\ncmd = "echo 1 > $@"\n'})
    assert pbuild("build", "//p:x", cwd=root).code == 0
    (root / "p" / "BUILD.toml").write_text('[x]\nrule = "genrule"\nouts = ["x.txt"]\ncmd = "echo 2 > $@"\n')
    cache = pbuild.cache
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    result = pbuild("build", "//p:x", cwd=root,
                    prefix=["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(cache)])
    assert_user_error(result, 2, f"cannot use cache dir {cache}: Read-only file system")


def test_an_unreadable_user_config_is_a_message(nobody_dir: Path) -> None:
    ws = nobody_dir / "ws"
    ws.mkdir()
    (ws / "WORKSPACE.toml").write_text("")
    config = nobody_dir / "xdg-config" / "pbuild" / "config.toml"  # the Runner's $XDG_CONFIG_HOME
    config.parent.mkdir(parents=True)
    config.write_text("")
    chown_tree(nobody_dir, 65534, 65534)
    config.chmod(0)
    result = _as_nobody(nobody_dir, ws, "build", "//...")
    assert_user_error(result, 2, f"Permission denied: {config}", f"check the permissions of {config}")


def test_an_error_of_another_kind_is_still_a_traceback() -> None:
    """Only the machine's errors become messages; pbuild's own bugs keep their traceback."""
    from pbuild.engine.oserrors import from_os_error

    assert from_os_error(FileNotFoundError(2, "No such file or directory", "/x")) is None
    assert from_os_error(OSError(28, "No space left on device")) is not None
    assert from_os_error(PermissionError(13, "Permission denied")) is None  # no path to name
