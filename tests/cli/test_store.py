"""The local store: CAS, action cache, atomic writes, damage detection, clean."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.hashing import digest_bytes, digest_file
from pbuild.engine.materialize import materialize
from pbuild.engine.outputs import undeclared_outputs
from pbuild.engine.store import ActionResult, LocalStore, OutputRecord

from tests.support.runner import PBUILD, Runner, base_env, cache_is_consistent, write_tree

# -- CAS -----------------------------------------------------------------------------------------


def test_put_file_stores_read_only_blobs_by_digest(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    src = tmp_path / "f"
    src.write_bytes(b"content")
    digest, size = store.put_file(str(src), executable=False, move=False)
    assert (digest, size) == (digest_bytes(b"content"), 7)
    blob = Path(store.blob_path(digest))
    assert blob == tmp_path / "cache" / "cas" / digest[:2] / digest
    assert blob.read_bytes() == b"content"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert src.exists()  # copied, not moved
    # the executable variant is a separate blob with mode 0555
    digest_x, _ = store.put_file(str(src), executable=True, move=True)
    assert digest_x == digest and not src.exists()
    assert stat.S_IMODE(Path(store.blob_path(digest, True)).stat().st_mode) == 0o555
    assert store.has_blob(digest) and store.has_blob(digest, True)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_materializing_a_blob_twice_leaves_no_temp_file(tmp_path: Path) -> None:
    # The second link is to the same inode as the first: rename() then does nothing.
    store = LocalStore(str(tmp_path / "cache"))
    src = tmp_path / "f"
    src.write_bytes(b"content")
    digest, size = store.put_file(str(src), executable=False, move=False)
    out = tmp_path / "out"
    for _ in range(2):
        materialize(store, OutputRecord("pbuild-out/f", digest, size, False), str(out / "f"))
    assert sorted(p.name for p in out.iterdir()) == ["f"]
    assert (out / "f").read_bytes() == b"content"


def test_storing_existing_content_again_keeps_the_blob(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    for i in range(3):
        src = tmp_path / f"f{i}"
        src.write_bytes(b"same")
        store.put_file(str(src), executable=False, move=True)
        assert not src.exists()
    assert store.put_bytes(b"same", digest_bytes(b"same")) == store.blob_path(digest_bytes(b"same"))
    assert len([p for p in (tmp_path / "cache" / "cas").rglob("*") if p.is_file()]) == 1


def test_verify_blob_deletes_a_damaged_blob(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    digest = digest_bytes(b"good")
    path = Path(store.put_bytes(b"good", digest))
    assert store.verify_blob(digest)
    path.chmod(0o644)
    path.write_bytes(b"evil")
    assert not store.verify_blob(digest)
    assert not path.exists()  # never served again
    assert not store.verify_blob(digest)  # a missing blob is not valid either


def test_concurrent_writers_of_one_blob(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    data = os.urandom(1 << 20)
    digest = digest_bytes(data)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            src = tmp_path / f"src{i}"
            src.write_bytes(data)
            store.put_file(str(src), executable=False, move=True, digest=digest)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert digest_file(store.blob_path(digest)) == (digest, len(data))
    assert cache_is_consistent(tmp_path / "cache") == []


# -- AC ------------------------------------------------------------------------------------------


def result_with(n: int) -> ActionResult:
    outputs = tuple(OutputRecord(f"pbuild-out/p/f{i}", digest_bytes(str(i).encode()), i, i % 2 == 0) for i in range(n))
    return ActionResult(outputs, ("pbuild-out/p",), 0, None)


def test_action_results_round_trip(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    assert store.get_action("00" * 16) is None
    store.put_action("ab" * 16, result_with(3))
    assert store.get_action("ab" * 16) == result_with(3)
    assert ActionResult.from_json(result_with(5).to_json()) == result_with(5)


@pytest.mark.parametrize("damage", [b"", b"{", b'{"outputs": 3}', b"\x00\xff", b'{"outputs": [["p"]]}'])
def test_a_damaged_action_entry_is_a_miss(tmp_path: Path, damage: bytes) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    key = "cd" * 16
    store.put_action(key, result_with(1))
    entry = tmp_path / "cache" / "ac" / key[:2] / key
    entry.write_bytes(damage)
    assert store.get_action(key) is None


def test_readers_never_see_a_half_written_entry(tmp_path: Path) -> None:
    """Writers replace one AC entry over and over while readers parse it: every read is whole."""
    store = LocalStore(str(tmp_path / "cache"))
    key = "ef" * 16
    versions = [result_with(n) for n in (200, 400, 800)]
    store.put_action(key, versions[0])
    stop = threading.Event()
    bad: list[object] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            store.put_action(key, versions[i % 3])
            i += 1

    def read() -> None:
        for _ in range(300):
            got = store.get_action(key)
            if got not in versions:
                bad.append(got)

    writers = [threading.Thread(target=write) for _ in range(2)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert bad == []
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_verify_blob_restores_the_mode_the_cas_set(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    src = tmp_path / "f"
    src.write_bytes(b"tool")
    digest, _ = store.put_file(str(src), executable=True, move=True)
    blob = Path(store.blob_path(digest, True))
    blob.chmod(0o644)  # as `chmod` of a hard-linked output does
    assert store.verify_blob(digest, True)
    assert stat.S_IMODE(blob.stat().st_mode) == 0o555


def test_storing_fresh_bytes_replaces_a_damaged_blob(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    digest = digest_bytes(b"good")
    blob = Path(store.put_bytes(b"good", digest))
    blob.chmod(0o644)
    blob.write_bytes(b"evil")
    src = tmp_path / "f"
    src.write_bytes(b"good")
    store.put_file(str(src), executable=False, move=True)
    assert blob.read_bytes() == b"good" and stat.S_IMODE(blob.stat().st_mode) == 0o444


D = "pbuild-out/p/tree"


@pytest.mark.parametrize(("paths", "directories", "problem"), [
    (["pbuild-out/p/a", f"{D}/x", f"{D}/sub/y"], [D], None),
    (["pbuild-out/p/a"], [D], None),  # an empty tree
    (["pbuild-out/p/a", "p/in.txt"], [D], "it writes p/in.txt, which is not a declared output"),
    (["pbuild-out/p/a", ".git/hooks/pre-commit"], [D], "it writes .git/hooks/pre-commit"),
    (["pbuild-out/p/a", D], [], "are not the declared ones"),
    (["pbuild-out/p/a", D], [D], f"it has a file {D} where the action declares a directory"),
    (["pbuild-out/p/a", f"{D}/../../../p/in.txt"], [D], "which is not a declared output"),
    (["pbuild-out/p/a", f"{D}/./x"], [D], "which is not a declared output"),
    (["pbuild-out/p/a", f"{D}/x", f"{D}/x/y"], [D], f"it has a file {D}/x and also files inside it"),
    (["pbuild-out/p/a", "pbuild-out/p/a"], [D], "it lists pbuild-out/p/a twice"),
    ([f"{D}/x"], [D], "it lacks the declared output pbuild-out/p/a"),
    (["pbuild-out/p/a", "pbuild-out/p/a/x"], [D], "which is not a declared output"),
])
def test_a_result_must_write_exactly_the_declared_outputs(paths: list[str], directories: list[str],
                                                          problem: str | None) -> None:
    found = undeclared_outputs(paths, directories, {"pbuild-out/p/a"}, {D})
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_materialize_is_a_read_only_hard_link(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    src = tmp_path / "f"
    src.write_bytes(b"out")
    digest, size = store.put_file(str(src), executable=True, move=True)
    dest = tmp_path / "ws" / "pbuild-out" / "p" / "f"
    materialize(store, OutputRecord("pbuild-out/p/f", digest, size, True), str(dest))
    blob = Path(store.blob_path(digest, True))
    assert dest.stat().st_ino == blob.stat().st_ino
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    # a second materialization (say, after the user replaced the file) puts the link back
    dest.unlink()
    dest.write_bytes(b"user edit")
    materialize(store, OutputRecord("pbuild-out/p/f", digest, size, True), str(dest))
    assert dest.read_bytes() == b"out" and dest.stat().st_ino == blob.stat().st_ino
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f"]


def test_expunge_and_stale_temp_dirs(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "cache"))
    store.put_bytes(b"x", digest_bytes(b"x"))
    store.put_action("aa" * 16, result_with(1))
    mine = Path(store.new_tmp_dir("act"))
    dead = tmp_path / "cache" / "tmp" / f"act-{_dead_pid()}-abc"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub").chmod(0o555)  # read-only folders are removed too
    store.remove_stale_tmp()
    assert mine.exists() and not dead.exists()
    store.expunge()
    for sub in ("cas", "ac", "tmp", "index"):
        assert not (tmp_path / "cache" / sub).exists() or not any((tmp_path / "cache" / sub).rglob("*"))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- end to end ------------------------------------------------------------------------------------

CHAIN = {
    "WORKSPACE.toml": "",
    "p/BUILD.toml": """
        [a]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["a.txt"]
        cmd = "sleep 0.2; tr a-z A-Z < $< > $@"

        [b]
        rule = "genrule"
        srcs = [":a"]
        outs = ["b.txt"]
        cmd = "sleep 0.2; cat $< $< > $@"

        [c]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["c.txt", "c.sh"]
        cmd = "sleep 0.2; set -- $(OUTS); rev < in.txt > $1; printf '#!/bin/sh\\\\necho hi\\\\n' > $2; chmod +x $2"
    """,
    "p/in.txt": "hello\n",
}
EXPECTED = {"a.txt": b"HELLO\n", "b.txt": b"HELLO\nHELLO\n", "c.txt": b"olleh\n", "c.sh": b"#!/bin/sh\necho hi\n"}


def outputs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "pbuild-out" / "p").iterdir())}


def events_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_for(text: str) -> dict[str, bytes]:
    data = text.encode()
    return {"a.txt": data.upper(), "b.txt": data.upper() * 2, "c.sh": b"#!/bin/sh\necho hi\n",
            "c.txt": data.rstrip(b"\n")[::-1] + b"\n"}


def test_two_builds_of_one_workspace_at_once(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    for text in ("hello\n", "other input\n"):
        (root / "p" / "in.txt").write_text(text)
        procs = [pbuild.popen("build", "//p:all", "-j", str(j), cwd=root) for j in (1, 2)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
        assert outputs(root) == expected_for(text)
        assert cache_is_consistent(pbuild.cache) == []
        assert not list((root / "pbuild-out").rglob("*.tmp"))
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0 and "executed" not in result.summary, str(result)


def blob_of(cache: Path, content: bytes, executable: bool = False) -> Path:
    digest = digest_bytes(content)
    return cache / "cas" / digest[:2] / (digest + (".x" if executable else ""))


@pytest.mark.parametrize("clean_first", [False, True], ids=["outputs-present", "after-clean"])
def test_a_damaged_blob_is_rebuilt_never_served(tmp_path: Path, pbuild: Runner, clean_first: bool) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    assert pbuild("build", "//p:all", cwd=root).code == 0
    blob = blob_of(pbuild.cache, EXPECTED["a.txt"])
    assert blob.read_bytes() == EXPECTED["a.txt"]
    if clean_first:
        assert pbuild("clean", cwd=root).code == 0
    blob.chmod(0o644)
    blob.write_bytes(b"EVIL!!\n")  # same size: only the digest can tell
    events = tmp_path / "events.json"
    result = pbuild("build", "//p:all", "--build-event-json", str(events), cwd=root)
    assert result.code == 0, str(result)
    assert outputs(root) == EXPECTED
    assert cache_is_consistent(pbuild.cache) == []
    status = {e["label"]: e["status"] for e in events_of(events) if e["type"] == "action"}
    assert status["//p:a"] == "executed"
    assert status["//p:c"] == "cached"


def test_clean_and_expunge(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    assert pbuild("build", "//p:all", cwd=root).code == 0
    result = pbuild("clean", cwd=root / "p")  # from a package folder too
    assert result.code == 0, str(result)
    assert not (root / "pbuild-out").exists()
    assert (root / "p" / "in.txt").exists()
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0 and result.summary.startswith("3 actions: 3 cached"), str(result)
    assert outputs(root) == EXPECTED
    result = pbuild("clean", "--expunge", cwd=root)
    assert result.code == 0, str(result)
    assert not (root / "pbuild-out").exists()
    # gc.lock stays (a build waiting on it would otherwise lock a file nobody else sees)
    assert not [p for p in pbuild.cache.rglob("*") if p.is_file() and p.name != "gc.lock"]
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0 and result.summary.startswith("3 actions: 3 executed"), str(result)


def test_cache_dir_precedence(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, **env: str) -> None:
        full = base_env(tmp_path)
        full.pop("PBUILD_CACHE", None)
        full["HOME"] = str(home)
        full.update(env)
        proc = subprocess.run([*PBUILD, "build", "//p:a", *args], cwd=root, env=full, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def has_cache(path: Path) -> bool:
        return (path / "ac").is_dir() and any((path / "cas").rglob("*"))

    run("--cache-dir", str(tmp_path / "flag"), PBUILD_CACHE=str(tmp_path / "env"))
    assert has_cache(tmp_path / "flag") and not (tmp_path / "env").exists()
    run(PBUILD_CACHE=str(tmp_path / "env"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert has_cache(tmp_path / "env") and not (tmp_path / "xdg").exists()
    run(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert has_cache(tmp_path / "xdg" / "pbuild")
    run()
    assert has_cache(home / ".cache" / "pbuild")


def test_unusable_cache_dir_is_a_user_error(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = pbuild("build", "//p:a", "--cache-dir", str(not_a_dir), cwd=root)
    assert result.code == 2 and "Traceback" not in result.err, str(result)
    assert str(not_a_dir) in result.err and "hint:" in result.err, str(result)


@pytest.fixture
def other_fs_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache dir on another filesystem than the workspace's (/dev/shm), where outputs are copies."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the workspace's")
    cache = Path(tempfile.mkdtemp(prefix="pbuild-test-cache-", dir=shm))
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def test_a_cache_on_another_filesystem_gives_read_only_copies(tmp_path: Path, pbuild: Runner,
                                                              other_fs_cache: Path) -> None:
    cache = other_fs_cache
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    result = pbuild("build", "//p:all", cwd=root, cache=cache)
    assert result.code == 0, str(result)
    assert outputs(root) == expected_for("hello\n")
    for name, mode in (("a.txt", 0o444), ("c.sh", 0o555)):
        out = root / "pbuild-out" / "p" / name
        assert stat.S_IMODE(out.stat().st_mode) == mode  # a copy, but never a writable one
        assert out.stat().st_nlink == 1
    assert cache_is_consistent(cache) == []


def test_a_damaged_blob_behind_a_copy_never_reaches_an_action(tmp_path: Path, pbuild: Runner,
                                                               other_fs_cache: Path) -> None:
    """With the cache on another filesystem, pbuild-out holds copies, so damage to
    a blob leaves the output intact and the cache hit looks fine; the next action that reads the
    blob must still get the right bytes (and must not cache a wrong output)."""
    cache = other_fs_cache
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    assert root.stat().st_dev != cache.stat().st_dev
    assert pbuild("build", "//p:b", cwd=root, cache=cache).code == 0
    assert (root / "pbuild-out" / "p" / "a.txt").stat().st_nlink == 1  # a copy
    blob = blob_of(cache, EXPECTED["a.txt"])
    blob.chmod(0o644)
    blob.write_bytes(b"EVIL!\n")  # same size: only the digest can tell
    build = root / "p" / "BUILD.toml"
    build.write_text(build.read_text().replace("cat $< $< > $@", "cat $< $< $< > $@"))
    events = tmp_path / "events.json"
    result = pbuild("build", "//p:b", "--build-event-json", str(events), cwd=root, cache=cache)
    assert result.code == 0, str(result)
    status = {e["label"]: e["status"] for e in events_of(events) if e["type"] == "action"}
    assert status == {"//p:a": "cached", "//p:b": "executed"}
    assert outputs(root)["b.txt"] == b"HELLO\n" * 3
    assert blob.read_bytes() == EXPECTED["a.txt"]  # put back from the verified copy
    assert cache_is_consistent(cache) == []


def test_chmod_of_an_output_changes_neither_the_cache_nor_later_builds(tmp_path: Path, pbuild: Runner) -> None:
    """Outputs are hard links to CAS blobs, so `chmod` reaches the blob; the CAS
    restores the mode it set, for this workspace and every other one sharing the cache."""
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    assert pbuild("build", "//p:all", cwd=root).code == 0
    out = root / "pbuild-out" / "p"
    text, script = blob_of(pbuild.cache, EXPECTED["a.txt"]), blob_of(pbuild.cache, EXPECTED["c.sh"], True)
    assert (out / "a.txt").stat().st_ino == text.stat().st_ino  # the hard link through which chmod acts
    (out / "a.txt").chmod(0o666)
    (out / "c.sh").chmod(0o444)
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0, str(result)
    assert outputs(root) == EXPECTED
    for path, mode in ((out / "a.txt", 0o444), (out / "c.sh", 0o555), (text, 0o444), (script, 0o555)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    # Another checkout materializing from the same cache gets the CAS's modes too.
    other = tmp_path / "other"
    write_tree(other, CHAIN)
    result = pbuild("build", "//p:all", cwd=other)
    assert result.code == 0 and result.summary.startswith("3 actions: 3 cached"), str(result)
    assert stat.S_IMODE((other / "pbuild-out" / "p" / "c.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((other / "pbuild-out" / "p" / "a.txt").stat().st_mode) == 0o444
    assert cache_is_consistent(pbuild.cache) == []


def test_clean_with_a_symlinked_output_folder(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (root / "pbuild-out").symlink_to(scratch)  # outputs on another disk, as people do with bazel-out
    assert pbuild("build", "//p:a", cwd=root).code == 0
    assert (scratch / "p" / "a.txt").exists()
    result = pbuild("clean", cwd=root)
    assert result.code == 0, str(result)
    assert not (root / "pbuild-out" / "p" / "a.txt").exists()


def test_damage_that_keeps_size_and_mtime_is_detected(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    assert pbuild("build", "//p:b", cwd=root).code == 0
    out = root / "pbuild-out" / "p" / "a.txt"
    st = out.stat()
    out.chmod(0o644)
    with open(out, "r+b") as handle:  # through the hard link: the CAS blob changes with it
        handle.write(b"EVIL!\n")
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p`, rsync or `touch -r` leave it
    out.chmod(0o444)
    result = pbuild("build", "//p:b", cwd=root)
    assert result.code == 0, str(result)
    assert outputs(root)["a.txt"] == b"HELLO\n"
    assert cache_is_consistent(pbuild.cache) == []


def test_clean_never_empties_a_foreign_folder_behind_a_symlink(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, CHAIN)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work\n")
    (root / "pbuild-out").symlink_to(precious)  # a mistake: pbuild never used this folder
    result = pbuild("clean", cwd=root)
    assert (precious / "thesis.tex").read_text() == "years of work\n"
    assert result.code == 2 and "Traceback" not in result.err, str(result)
    assert "pbuild-out" in result.err and "hint:" in result.err, str(result)
