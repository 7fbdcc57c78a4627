"""Removing trees without following links: ``pbuild.tools.fstree.remove_tree``
on its own, and through the CLI where pbuild removes trees others wrote: an action's work folder,
stale temp folders in the cache, ``clean --expunge``; as root and as uid 65534."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.tools.fstree import remove_tree

from tests.support.runner import SETPRIV_NOBODY, Result, Runner, chown_tree, write_tree


def _plant_victim(base: Path) -> Path:
    """A private file of the user's outside every tree pbuild removes."""
    victim = base / "outside" / "secret"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("private\n")
    victim.chmod(0o600)
    victim.parent.chmod(0o700)
    return victim


def _locked_tree(top: Path, victim: Path) -> None:
    """Folders without write, search or read permission, each holding links to ``victim`` and to
    its folder: what an action (or an image) may leave behind."""
    deep = top / "ro" / "deeper" / "none"
    deep.mkdir(parents=True)
    for folder in (top, top / "ro", top / "ro" / "deeper", deep):
        (folder / "link").symlink_to(victim)
        (folder / "dirlink").symlink_to(victim.parent, target_is_directory=True)
        (folder / "file").write_text("x")
    deep.chmod(0)
    (top / "ro" / "deeper").chmod(0o300)
    (top / "ro").chmod(0o555)


# -- the helper itself -----------------------------------------------------------------------------


def test_removes_locked_folders_and_never_touches_what_links_point_at(tmp_path: Path) -> None:
    victim = _plant_victim(tmp_path)
    tree = tmp_path / "tree"
    _locked_tree(tree, victim)
    remove_tree(str(tree))
    assert not os.path.lexists(tree)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "private\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["secret"]


def test_a_link_given_as_the_tree_is_removed_as_a_link(tmp_path: Path) -> None:
    victim = _plant_victim(tmp_path)
    (tmp_path / "to-file").symlink_to(victim)
    (tmp_path / "to-dir").symlink_to(victim.parent, target_is_directory=True)
    remove_tree(str(tmp_path / "to-file"))
    remove_tree(str(tmp_path / "to-dir"))
    remove_tree(str(tmp_path / "never-existed"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]
    assert victim.read_text() == "private\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(sys.getrecursionlimit() + 500):  # by descriptor: the path would exceed PATH_MAX
        os.mkdir("d", 0o500, dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    remove_tree(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_a_filesystem_mounted_in_the_tree_is_not_emptied(tmp_path: Path) -> None:
    """A mount left inside a container's folder must not cost what is mounted there."""
    tree = tmp_path / "tree"
    (tree / "mnt").mkdir(parents=True)
    (tree / "plain").write_text("x")
    script = f"""
import errno, os, sys
sys.path[0:0] = {sys.path!r}
from pbuild.tools.fstree import remove_tree
os.system("mount -t tmpfs tmpfs {tree}/mnt")
open("{tree}/mnt/precious", "w").close()
try:
    remove_tree("{tree}")
except OSError as exc:
    print(exc.errno == errno.EBUSY, exc.filename, sorted(os.listdir("{tree}/mnt")), sorted(os.listdir("{tree}")))
"""
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", f"{tree}/mnt", "['precious']", "['mnt']"], proc.stdout


# -- through the CLI, as root and as uid 65534 ----------------------------------------------------

DIRTY_ACTION = """
    [x]
    rule = "genrule"
    outs = ["x.txt"]
    cmd = "d=$@.junk; mkdir -p $d/ro/deeper/none && ln -s VICTIM $d/ro/link && ln -s VICTIM $d/ro/deeper/none/link && chmod 000 $d/ro/deeper/none && chmod 555 $d/ro/deeper $d/ro && echo ok > $@"
"""

CLEAN_ACTION = '[x]\nrule = "genrule"\nouts = ["x.txt"]\ncmd = "echo ok > $@"\n'


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# (who, how pbuild comes to remove the planted tree). As root, a link in a read-only folder does
# not make unlink fail, so the root cases plant the link where the tree itself starts.
CASES = [
    ("nobody", "action"),  # an action leaves links in read-only folders of its work dir
    ("nobody", "stale-tmp"),  # a killed build's temp dir, removed by the next build
    ("nobody", "expunge"),
    ("root", "stale-tmp"),
    ("root", "expunge"),
]


@pytest.mark.parametrize(("who", "how"), CASES, ids=[f"{w}-{h}" for w, h in CASES])
def test_pbuild_never_chmods_what_a_link_points_at(who: str, how: str, tmp_path: Path, nobody_dir: Path) -> None:
    base = nobody_dir if who == "nobody" else tmp_path
    victim = _plant_victim(base)
    ws = base / "ws"
    action = DIRTY_ACTION.replace("VICTIM", str(victim)) if how == "action" else CLEAN_ACTION
    write_tree(ws, {"WORKSPACE.toml": "", "p/BUILD.toml": action})
    cache = base / "cache"
    pbuild = Runner(base)
    prefix = SETPRIV_NOBODY if who == "nobody" else ()
    if who == "nobody":
        chown_tree(base, 65534, 65534)

    def run(*args: str) -> Result:
        return pbuild(*args, cwd=ws, cache=cache, prefix=prefix)

    if how != "action":
        assert run("build", "//p:x").code == 0  # creates the cache
        planted = cache / "tmp" / f"act-{_dead_pid()}-planted" if how == "stale-tmp" else cache / "cas" / "zz"
        if who == "nobody":
            _locked_tree(planted, victim)
            chown_tree(planted, 65534, 65534)
        else:
            planted.parent.mkdir(exist_ok=True)
            planted.symlink_to(victim)
        if how == "expunge":  # the cache's own folders may be links too
            shutil.rmtree(cache / "ac")
            (cache / "ac").symlink_to(victim.parent, target_is_directory=True)
    if how == "expunge":
        result = run("clean", "--expunge")
    else:
        with open(ws / "p" / "BUILD.toml", "a") as handle:
            handle.write("# changed: the next build is no no-op, so it cleans up stale temp dirs\n")
        result = run("build", "//p:x")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, "pbuild changed the mode of a file a link pointed at"
    assert stat.S_IMODE(victim.parent.stat().st_mode) == 0o700, "pbuild changed the mode of a folder a link pointed at"
    assert victim.read_text() == "private\n"
    assert result.code == 0 and "Traceback" not in result.err, str(result)
    if how == "action":
        assert not list((cache / "tmp").iterdir()), "the action's work dir was not removed"
    elif how == "stale-tmp":
        assert not os.path.lexists(planted), "the stale temp dir was not removed"
    else:
        assert not os.path.lexists(planted) and not os.path.lexists(cache / "ac")


def test_a_tree_clean_cannot_remove_is_a_message(tmp_path: Path, nobody_dir: Path) -> None:
    """Something pbuild may not delete in pbuild-out (root's file in a folder of root's): exit 2 naming it."""
    ws = nobody_dir / "ws"
    write_tree(ws, {"WORKSPACE.toml": "", "pbuild-out/p/keep/f": "x"})
    chown_tree(nobody_dir, 65534, 65534)
    os.chown(ws / "pbuild-out" / "p" / "keep", 0, 0)
    result = Runner(nobody_dir)("clean", cwd=ws, cache=nobody_dir / "cache", prefix=SETPRIV_NOBODY)
    assert result.code == 2, str(result)
    assert f"could not remove {ws}/pbuild-out/p/keep/f: Permission denied" in result.err, str(result)
    assert "Traceback" not in result.err
