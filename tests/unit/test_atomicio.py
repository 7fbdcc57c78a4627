"""Atomic publishing: files and folders appear whole or not at all, and nothing is left behind.

The last test holds the tree to it: no module but ``lib/atomicio.py`` renames onto a name, so
every publish goes through one temp-naming scheme and one cleanup.
"""

from __future__ import annotations

import ast
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.lib import atomicio

from tests.support.paths import REPO


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(atomicio.TEMP_SUFFIX))


@pytest.mark.parametrize("mode", [0o644, 0o444, 0o755, 0o600])
def test_written_file_has_exactly_its_mode_whatever_the_umask(tmp_path: Path, umask_077: None, mode: int) -> None:
    dest = tmp_path / "f"
    atomicio.write_bytes(str(dest), b"data", mode=mode)
    assert dest.read_bytes() == b"data"
    assert stat.S_IMODE(dest.stat().st_mode) == mode
    atomicio.write_text(str(dest), "again\n", mode=mode, durable=True)  # replacing a read-only file too
    assert dest.read_text() == "again\n" and stat.S_IMODE(dest.stat().st_mode) == mode
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    for error in (ValueError("digest mismatch"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomicio.writing(str(dest)) as handle:
            handle.write(b"half of the new")
            raise error
        assert dest.read_bytes() == b"old"
        assert _leftovers(tmp_path) == []


def test_a_failed_write_into_a_missing_folder_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "missing" / "f"
    with pytest.raises(FileNotFoundError):
        atomicio.write_bytes(str(dest), b"x")
    assert not dest.parent.exists()
    atomicio.write_bytes(str(dest), b"x", parents=True)
    assert dest.read_bytes() == b"x" and _leftovers(dest.parent) == []


def test_renaming_onto_another_link_of_the_same_file_leaves_no_temp(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"same")
    dest = tmp_path / "out"
    os.link(blob, dest)
    with atomicio.temp_beside(str(dest)) as tmp:
        os.link(blob, tmp)
        atomicio.publish_file(tmp, str(dest))  # POSIX: succeeds and does nothing
    assert dest.read_bytes() == b"same"
    assert _leftovers(tmp_path) == []


def test_temp_names_follow_one_scheme_that_sweepers_can_read(tmp_path: Path) -> None:
    dest = str(tmp_path / "abc.lock")
    name = atomicio.temp_name(dest)
    assert name != atomicio.temp_name(dest)
    assert os.path.dirname(name) == str(tmp_path)  # beside: the rename never crosses a filesystem
    assert atomicio.temp_target(os.path.basename(name)) == "abc.lock"
    for published in ("abc.lock", "abc.tmp", "abc.0123456789ab", "abc.0123456789.tmp", "abc.0123456789aZ.tmp",
                      ".0123456789ab.tmp"):
        assert atomicio.temp_target(published) is None, published


def test_publish_dir_race_has_one_winner_and_leaves_the_losers_to_their_callers(tmp_path: Path) -> None:
    dest = tmp_path / "tree"
    writers = 8
    temps = []
    for number in range(writers):
        tmp = Path(atomicio.temp_name(str(dest)))
        tmp.mkdir()
        (tmp / "who").write_text(str(number))
        (tmp / "sub").mkdir()  # a non-empty folder: rename onto it fails with ENOTEMPTY or EEXIST
        temps.append(tmp)
    start = threading.Barrier(writers)
    won: dict[int, bool] = {}

    def publish(number: int) -> None:
        start.wait()
        won[number] = atomicio.publish_dir(str(temps[number]), str(dest))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [n for n, w in won.items() if w]
    assert len(winners) == 1, won
    assert (dest / "who").read_text() == str(winners[0])
    for number, tmp in enumerate(temps):
        assert tmp.is_dir() == (number not in winners)  # a loser's folder is still there to remove


def test_publish_dir_raises_what_is_not_a_lost_race(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    tmp = tmp_path / "t"
    tmp.mkdir()
    with pytest.raises(NotADirectoryError):
        atomicio.publish_dir(str(tmp), str(tmp_path / "file"))
    with pytest.raises(FileNotFoundError):
        atomicio.publish_dir(str(tmp_path / "gone"), str(tmp_path / "dest"))


# -- every publish goes through atomicio ------------------------------------------------------

#: Calls that put a file or folder under a name: only lib/atomicio.py may make them.
_RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("tempfile", "mkstemp"),
            ("tempfile", "NamedTemporaryFile")}
#: A call on the line is allowed with this comment and the reason after it.
_EXEMPT = "# atomicio-exempt:"
#: Modules another item of this restructuring rewrites (the OCI package, the scheduler's stages);
#: they move to atomicio there. An entry whose module has no such call any more fails the test.
_PENDING: dict[str, str] = {  # files whose sites another change is migrating
}
_OWN = "lib/atomicio.py"


def _renames_in(source: str) -> list[int]:
    """Line numbers of rename-like calls in ``source`` that carry no exemption comment."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func = node.func
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if (owner, func.attr) in _RENAMES and _EXEMPT not in lines[node.lineno - 1]:
            found.append(node.lineno)
    return found


def test_replace_dir_swaps_a_folder_in_whole_and_hands_back_the_old_one(tmp_path: Path) -> None:
    dest, new = tmp_path / "tree", tmp_path / "new"
    assert atomicio.replace_dir(str(_folder(new, "one")), str(dest)) is None  # nothing to replace
    old = atomicio.replace_dir(str(_folder(tmp_path / "newer", "two")), str(dest))
    assert (dest / "f").read_text() == "two" and not new.exists()
    assert old is not None and atomicio.temp_target(os.path.basename(old)) == "tree"
    assert Path(old, "f").read_text() == "one"  # the caller removes it, by its own rules


def test_a_failed_replace_dir_puts_the_old_folder_back(tmp_path: Path) -> None:
    dest = _folder(tmp_path / "tree", "old")
    with pytest.raises(FileNotFoundError):
        atomicio.replace_dir(str(tmp_path / "missing"), str(dest))
    assert (dest / "f").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["tree"]


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f").write_text(text)
    return path


def test_the_scanner_finds_renames_and_honours_exemptions() -> None:
    source = ("import os\nos.replace(a, b)\nos.rename(a, b)  # atomicio-exempt: why\n"
              "tempfile.mkstemp()\n'x'.replace('a', 'b')\n")
    assert _renames_in(source) == [2, 4]


def test_no_module_but_atomicio_renames_onto_a_name() -> None:
    offenders, stale = [], []
    for top in ("engine", "rules", "tools", "lib"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == _OWN:
                continue
            lines = _renames_in(path.read_text(encoding="utf-8"))
            if rel in _PENDING:
                if not lines:
                    stale.append(rel)
                continue
            offenders.extend(f"{rel}:{line}" for line in lines)
    assert offenders == [], ("publish through pbuild.lib.atomicio (write_bytes, writing, temp_beside + "
                             f"publish_file, publish_dir), or say why not with {_EXEMPT!r}")
    assert [p for p in _PENDING if not (REPO / p).exists()] + stale == [], "remove these from _PENDING"
