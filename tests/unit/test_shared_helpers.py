"""One copy each of the helpers tools/ shares: the tree removal (``fstree``) and the fd cleanup
before an exec (``sandbox.linux.keep_only_fds``), used by the sandbox and the launcher alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pbuild.tools.fstree import remove_at
from pbuild.tools.sandbox import linux

from tests.support.runner import SETPRIV_NOBODY, chown_tree


def test_the_launcher_removes_layer_entries_with_the_one_tree_removal(nobody_dir: Path) -> None:
    """A whiteout of a folder holding a 0555 folder (images make them) works for an unprivileged
    user: the launcher's removal is fstree's, which gives its own folders owner rwx first."""
    victim = nobody_dir / "layer" / "app"
    (victim / "locked").mkdir(parents=True)
    (victim / "locked" / "file").write_text("x")
    chown_tree(nobody_dir, 65534, 65534)
    (victim / "locked").chmod(0o555)
    script = (
        "import os, sys\n"
        "from pbuild.tools.launcher.inroot import RootDir, clear_dir\n"
        "with RootDir(sys.argv[1]) as root:\n"
        "    clear_dir(root.fd)\n"
    )
    done = subprocess.run(
        [*SETPRIV_NOBODY, sys.executable, "-c", script, str(nobody_dir / "layer")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not victim.exists()


def test_remove_at_removes_files_links_and_folders_by_name(tmp_path: Path) -> None:
    """A link is removed as a link (its target stays), a folder with what it holds, nothing is fine."""
    (tmp_path / "target").write_text("kept")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "sub" / "f").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("link", "folder", "missing"):
            remove_at(fd, name)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_keep_only_fds_is_one_function() -> None:
    """The sandbox and the launcher close their fds with the same helper."""
    from pbuild.tools.launcher import lifecycle, process

    assert not hasattr(process, "keep_only_fds")
    assert "linux.keep_only_fds" in Path(lifecycle.__file__).read_text()
    assert "linux.keep_only_fds" in Path(process.__file__).read_text()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        linux.keep_only_fds([w])
        code = 0
        try:
            os.fstat(r)
            code = 1  # r should be closed
        except OSError:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert os.waitstatus_to_exitcode(status) == 0
