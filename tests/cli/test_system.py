"""`pbuild system df`, `pbuild system prune` and the build cache's size budget, on real builds.

Every command runs with its own cache, layer store and runtime dir (``sys_env``): a prune must
never reach the machine's own.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.runner import Runner, assert_user_error, write_tree

KIB = 1024


def big(name: str, kib: int, seed: str) -> str:
    """A genrule writing ``kib`` KiB of content unique to ``seed``."""
    return f"""
        [{name}]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["{name}.bin"]
        cmd = "yes {seed} | head -c {kib * KIB} > $@"
    """


def workspace(root: Path, *targets: str, workspace_toml: str = "") -> None:
    write_tree(root, {"WORKSPACE.toml": workspace_toml, "p/BUILD.toml": "".join(targets), "p/in.txt": "x\n"})


@pytest.fixture
def sys_env(tmp_path: Path) -> dict[str, str]:
    return {"PBUILD_LAYER_STORE": str(tmp_path / "layers"), "PBUILD_RUNTIME_DIR": str(tmp_path / "run"),
            "HOME": str(tmp_path / "home")}


def df(pbuild: Runner, root: Path, env: dict[str, str]) -> dict[str, dict[str, int]]:
    result = pbuild("system", "df", "--format", "json", cwd=root, env=env)
    assert result.code == 0, str(result)
    return {k["kind"]: k for k in json.loads(result.out)["kinds"]}


def on_disk(cache: Path) -> tuple[int, int]:
    """The build cache as the kernel sees it: (bytes of distinct inodes, bytes of inodes with no
    link outside the cache), computed here independently of pbuild."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    links: dict[tuple[int, int], int] = {}
    for path in cache.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        if path.relative_to(cache).parts[0] == "images":
            continue
        st = path.lstat()
        key = (st.st_dev, st.st_ino)
        seen[key] = (st.st_size, st.st_nlink)
        links[key] = links.get(key, 0) + 1
    size = sum(s for s, _ in seen.values())
    alone = sum(s for key, (s, nlink) in seen.items() if links[key] >= nlink)
    return size, alone


def test_df_counts_each_inode_once_and_linked_blobs_as_not_reclaimable(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 256, "a"), big("b", 128, "b"))
    assert pbuild("build", "//p:all", cwd=root, env=sys_env).code == 0
    row = df(pbuild, root, sys_env)["Build cache"]
    size, alone = on_disk(pbuild.cache)
    assert row["size"] == size
    assert row["total"] == 2  # AC entries
    # The outputs are hard links in pbuild-out: counted once, and deleting the CAS frees nothing of them.
    assert 384 * KIB <= size < 2 * 384 * KIB
    assert row["reclaimable"] < 384 * KIB
    lost = row["reclaimable"]
    assert pbuild("clean", cwd=root, env=sys_env).code == 0  # pbuild-out gone: the blobs' last links are the CAS's
    row = df(pbuild, root, sys_env)["Build cache"]
    assert row["reclaimable"] == on_disk(pbuild.cache)[1] >= lost + 384 * KIB
    kinds = df(pbuild, root, sys_env)
    assert kinds["Containers"]["total"] == kinds["Layers"]["total"] == kinds["Images"]["total"] == 0

    text = pbuild("system", "df", "-v", cwd=root, env=sys_env)
    assert text.code == 0, str(text)
    assert text.out.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert "Build cache:" in text.out and "cas" in text.out and "2 files" in text.out


def test_prune_removes_the_build_cache_says_what_it_freed_and_builds_still_work(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 256, "a"), big("b", 128, "b"))
    assert pbuild("build", "//p:all", cwd=root, env=sys_env).code == 0
    outputs = {p.name: p.read_bytes() for p in (root / "pbuild-out" / "p").iterdir()}
    expected = df(pbuild, root, sys_env)["Build cache"]["reclaimable"]
    result = pbuild("system", "prune", "-f", cwd=root, env=sys_env)
    assert result.code == 0, str(result)
    assert "Deleted build cache: 2 action cache entries" in result.out, str(result)
    from pbuild.lib.sizes import format_size

    assert f"Total reclaimed space: {format_size(expected)}" in result.out, str(result)
    assert not [p for p in (pbuild.cache / "cas").rglob("*") if p.is_file()]
    assert not [p for p in (pbuild.cache / "ac").rglob("*") if p.is_file()]
    # pbuild-out is the user's: kept, intact; the next build runs again and gives the same bytes.
    assert {p.name: p.read_bytes() for p in (root / "pbuild-out" / "p").iterdir()} == outputs
    again = pbuild("build", "//p:all", cwd=root, env=sys_env)
    assert again.code == 0 and "2 executed" in again.summary, str(again)
    assert {p.name: p.read_bytes() for p in (root / "pbuild-out" / "p").iterdir()} == outputs


def test_prune_without_force_refuses_when_it_cannot_ask(tmp_path: Path, pbuild: Runner,
                                                         sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 4, "a"))
    assert pbuild("build", "//p:a", cwd=root, env=sys_env).code == 0
    before = sorted(p for p in pbuild.cache.rglob("*") if p.is_file())
    result = pbuild("system", "prune", cwd=root, env=sys_env)  # stdin is not a terminal
    assert_user_error(result, 2, "stdin is not a terminal", "pass -f (--force)")
    assert sorted(p for p in pbuild.cache.rglob("*") if p.is_file()) == before


def _prune_on_a_terminal(pbuild: Runner, root: Path, env: dict[str, str], answer: bytes) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(pbuild.command(["system", "prune"]), cwd=root, env=pbuild.env(None, env),
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        seen += os.read(leader, 4096)
    os.write(leader, answer)
    proc.wait(timeout=60)
    try:
        while chunk := os.read(leader, 4096):
            seen += chunk
    except OSError:  # EIO: the other side closed
        pass
    os.close(leader)
    return seen.decode(errors="replace")


def test_prune_asks_on_a_terminal_and_no_keeps_everything(tmp_path: Path, pbuild: Runner,
                                                           sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 4, "a"))
    assert pbuild("build", "//p:a", cwd=root, env=sys_env).code == 0
    before = sorted(p for p in pbuild.cache.rglob("*") if p.is_file())
    text = _prune_on_a_terminal(pbuild, root, sys_env, b"n\n")
    assert "WARNING! This will remove:" in text and "all stopped containers" in text and "Nothing removed." in text
    assert sorted(p for p in pbuild.cache.rglob("*") if p.is_file()) == before
    text = _prune_on_a_terminal(pbuild, root, sys_env, b"y\n")
    assert "Total reclaimed space:" in text, text
    assert not [p for p in (pbuild.cache / "ac").rglob("*") if p.is_file()]


@pytest.mark.parametrize(("config", "fragments"), [
    ('[cache]\nmax_size = "20X"\n', ("WORKSPACE.toml:2", "cache.max_size '20X' is not a size", 'max_size = "20G"')),
    ("# budget\n[cache]\nmax_size = 0\n", ("WORKSPACE.toml:3", "cache.max_size 0 is not a size")),
    ('[cache]\nmax_size = "-1G"\n', ("WORKSPACE.toml:2", "is not a size")),
    ('[cache]\nmaxsize = "1G"\n', ("WORKSPACE.toml:2", "unknown key cache.maxsize", "max_size")),
    ('cache = "1G"\n', ("WORKSPACE.toml:1", "[cache] must be a table")),
])
def test_a_bad_max_size_in_the_workspace_is_an_input_error_with_its_line(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str], config: str, fragments: tuple[str, ...]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 4, "a"), workspace_toml=config)
    assert_user_error(pbuild("build", "//p:a", cwd=root, env=sys_env), 2, *fragments)
    assert_user_error(pbuild("system", "df", cwd=root, env=sys_env), 2, *fragments)


def test_a_bad_max_size_in_the_user_config_names_that_file(tmp_path: Path, pbuild: Runner,
                                                            sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 4, "a"))
    config = tmp_path / "xdg-config" / "pbuild" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[remote]\n\n[cache]\nmax_size = "lots"\n')
    assert_user_error(pbuild("build", "//p:a", cwd=root, env=sys_env), 2, f"{config}:4",
                      "cache.max_size 'lots' is not a size")


def age(cache: Path, entries: object, when: float) -> None:
    """Make AC entries (and every up-to-date stamp, whose mtime is a use of the keys it lists)
    last used at ``when``; the workspaces' notes of when they last touched an entry go too, so
    that the next hit touches it again."""
    for path in [*entries, *(cache / "index").glob("*.stamp")]:  # type: ignore[misc]
        os.utime(path, (when, when))
    for notes in (cache / "index").glob("*.acuse"):
        notes.unlink()


def ac_entries(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in (cache / "ac").rglob("*") if p.is_file()}


def keys_by_label(events: Path) -> dict[str, str]:
    found = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("label") and event.get("key"):
            found[event["label"]] = event["key"]
    return found


def test_the_budget_evicts_least_recently_used_first_and_gets_under_it(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    names = ["t0", "t1", "t2", "t3", "t4", "t5"]
    workspace(root, *(big(n, 100, n) for n in names), big("new", 20, "new"))
    events = tmp_path / "events.jsonl"
    result = pbuild("build", *(f"//p:{n}" for n in names), "--build-event-json", str(events), cwd=root, env=sys_env)
    assert result.code == 0, str(result)
    keys = keys_by_label(events)
    entries = ac_entries(pbuild.cache)
    # Last uses an hour apart: t0 the oldest ... t5 the newest; then t1 is used again (a hit).
    now = time.time()
    age(pbuild.cache, [], now - 9000)
    for i, name in enumerate(names):
        os.utime(entries[keys[f"//p:{name}"]], (now - 7200 + 600 * i, now - 7200 + 600 * i))
    (root / "pbuild-out").rename(tmp_path / "old-out")  # so that the hit re-links (and no-op stamps do not apply)
    hit = pbuild("build", "//p:t1", cwd=root, env=sys_env)
    assert hit.code == 0 and "1 cached" in hit.summary, str(hit)
    assert entries[keys["//p:t1"]].stat().st_mtime > now - 60  # the hit touched it
    os.utime(entries[keys["//p:t1"]], (now - 1800, now - 1800))
    (root / "pbuild-out").rename(tmp_path / "old-out-2")
    assert pbuild("build", "//p:t1", cwd=root, env=sys_env).code == 0
    # ...and within the hour another hit does not write it again: an hour is eviction's grain.
    assert entries[keys["//p:t1"]].stat().st_mtime == now - 1800
    size = df(pbuild, root, sys_env)["Build cache"]["size"]
    # Over by the new 20 KiB result plus 220 KiB: two evictions are not enough, three are (t0, t2,
    # t3: oldest first, t1 was used since); 40 KiB of slack for the new stamp and indexes.
    budget = size - 3 * 100 * KIB + 60 * KIB
    (root / "WORKSPACE.toml").write_text(f"[cache]\nmax_size = {budget}\n")
    built = pbuild("build", "//p:new", cwd=root, env=sys_env)
    assert built.code == 0, str(built)
    assert "over its budget" in built.err and "WORKSPACE.toml:2" in built.err, str(built)
    left = ac_entries(pbuild.cache)
    kept = {n for n in [*names, "new"] if keys.get(f"//p:{n}", "?") in left}
    assert "new" not in keys  # (built after the event file was read)
    assert kept == {"t1", "t4", "t5"}, built.err
    assert df(pbuild, root, sys_env)["Build cache"]["size"] <= budget
    # Evicted entries are misses that run again; kept ones hit.
    again = pbuild("build", "//p:t0", "//p:t5", cwd=root, env=sys_env)
    assert again.code == 0 and "1 cached" in again.summary and "1 executed" in again.summary, str(again)


def test_a_memo_naming_an_evicted_entry_is_a_miss_not_a_failure(tmp_path: Path, pbuild: Runner,
                                                                  sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 64, "a"), """
        [b]
        rule = "genrule"
        srcs = [":a"]
        outs = ["b.txt"]
        cmd = "wc -c < $< > $@"
    """, big("other", 64, "o"))
    assert pbuild("build", "//p:b", cwd=root, env=sys_env).code == 0
    memo = next((pbuild.cache / "index").glob("*.acmemo"))
    entries = ac_entries(pbuild.cache)
    age(pbuild.cache, entries.values(), 1)  # long unused
    (root / "WORKSPACE.toml").write_text('[cache]\nmax_size = "70K"\n')
    evicting = pbuild("build", "//p:other", cwd=root, env=sys_env)
    assert evicting.code == 0 and "over its budget" in evicting.err, str(evicting)
    assert not set(entries) & set(ac_entries(pbuild.cache))  # a and b evicted, their blobs too
    assert memo.exists()  # ...while the workspace's memo still names them
    assert pbuild("clean", cwd=root, env=sys_env).code == 0  # nothing left to vouch for the outputs
    result = pbuild("build", "//p:b", cwd=root, env=sys_env)
    assert result.code == 0 and "2 executed" in result.summary, str(result)
    assert (root / "pbuild-out" / "p" / "b.txt").read_text().strip() == str(64 * KIB)


def hold(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, mode)
    return fd


def wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_prune_all_during_a_build_in_another_process_waits_and_the_build_succeeds(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 64, "a"), """
        [slow]
        rule = "genrule"
        srcs = [":a"]
        outs = ["slow.txt"]
        cmd = "sleep 3; wc -c < $< > $@"
    """)
    assert pbuild("build", "//p:a", cwd=root, env=sys_env).code == 0  # a's blob is in the cache...
    build = pbuild.popen("build", "//p:slow", cwd=root, env=sys_env)
    try:
        # ...and the slow action reads it from there: wait until it runs, then prune everything.
        wait_for(lambda: any((pbuild.cache / "tmp").glob("act-*")))
        started = time.monotonic()
        pruned = pbuild("system", "prune", "-a", "-f", cwd=root, env=sys_env)
        took = time.monotonic() - started
        out, err = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == 0, err
    assert (root / "pbuild-out" / "p" / "slow.txt").read_text().strip() == str(64 * KIB)
    assert pruned.code == 0, str(pruned)
    assert "builds are running" in pruned.err and "waiting for them to finish" in pruned.err, str(pruned)
    assert took > 1.0  # it waited for the build's session to end
    assert "Deleted build cache:" in pruned.out
    assert not ac_entries(pbuild.cache)  # and then it did prune, the slow action's entry too


def test_eviction_after_a_build_skips_while_another_build_runs(tmp_path: Path, pbuild: Runner,
                                                               sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 64, "a"), big("b", 64, "b"), workspace_toml='[cache]\nmax_size = "10K"\n')
    pbuild.cache.mkdir(parents=True)
    fd = hold(pbuild.cache / "gc.lock", fcntl.LOCK_SH)  # another build's session
    try:
        result = pbuild("build", "//p:a", cwd=root, env=sys_env)
        assert result.code == 0 and "over its budget" not in result.err, str(result)
        assert len(ac_entries(pbuild.cache)) == 1  # nothing evicted while the cache is in use
    finally:
        os.close(fd)
    age(pbuild.cache, ac_entries(pbuild.cache).values(), 1)
    result = pbuild("build", "//p:b", cwd=root, env=sys_env)  # the next build to finish catches up
    assert result.code == 0 and "over its budget" in result.err, str(result)
    assert "still over: the last build's own entries are kept" in result.err
    assert len(ac_entries(pbuild.cache)) == 1



def usage(cache: Path) -> tuple[int, int]:
    measured, added = (cache / "gc.usage").read_text().split()
    return int(measured), int(added)


def test_builds_under_budget_only_add_to_the_estimate_and_a_no_op_touches_nothing(
        tmp_path: Path, pbuild: Runner, sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 64, "a"), big("b", 32, "b"), workspace_toml='[cache]\nmax_size = "1G"\n')
    assert pbuild("build", "//p:a", cwd=root, env=sys_env).code == 0
    measured, added = usage(pbuild.cache)
    assert measured > 64 * KIB and added == 0  # the first build measured: there was no estimate yet
    assert pbuild("build", "//p:b", cwd=root, env=sys_env).code == 0
    # No scan: the measurement stands, and the estimate grew by what b wrote (its blob, its entry).
    assert usage(pbuild.cache)[0] == measured
    assert 32 * KIB < usage(pbuild.cache)[1] < 33 * KIB
    before = (pbuild.cache / "gc.usage").stat().st_mtime_ns
    stamp = max((pbuild.cache / "index").glob("*.stamp"), key=lambda p: p.stat().st_mtime_ns)  # b's
    os.utime(stamp, (1, 1))
    noop = pbuild("build", "//p:b", cwd=root, env=sys_env)
    assert noop.code == 0, str(noop)
    assert (pbuild.cache / "gc.usage").stat().st_mtime_ns == before  # not even the estimate was read
    assert stamp.stat().st_mtime > 1  # the no-op recorded its use of b's entry on its stamp


def test_the_smaller_budget_of_workspace_and_user_config_wins(tmp_path: Path, pbuild: Runner,
                                                              sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    config = tmp_path / "xdg-config" / "pbuild" / "config.toml"
    config.parent.mkdir(parents=True)
    for workspace_size, user_size, source in (("2G", "1G", f"{config}:2"), ("1G", "2G", "WORKSPACE.toml:2")):
        workspace(root, big("a", 4, "a"), workspace_toml=f'[cache]\nmax_size = "{workspace_size}"\n')
        config.write_text(f'[cache]\nmax_size = "{user_size}"\n')
        result = pbuild("system", "df", "--format", "json", cwd=root, env=sys_env)
        assert result.code == 0, str(result)
        assert json.loads(result.out)["budget"]["max_size"] == 1 << 30
        assert json.loads(result.out)["budget"]["source"] == source


def test_prune_leaves_a_toolchain_tree_whose_lock_is_held(tmp_path: Path, pbuild: Runner,
                                                          sys_env: dict[str, str]) -> None:
    root = tmp_path / "ws"
    workspace(root, big("a", 4, "a"))
    trees = pbuild.cache / "toolchains"
    for name in ("held", "free"):
        (trees / name / "usr" / "bin").mkdir(parents=True)
        (trees / name / "usr" / "bin" / "python3").write_text("#!/bin/sh\n")
    fd = hold(trees / "held.lock", fcntl.LOCK_SH)  # a program running on that tree
    try:
        result = pbuild("system", "prune", "-f", cwd=root, env=sys_env)
        assert result.code == 0 and "1 toolchain trees" in result.out, str(result)
        assert (trees / "held" / "usr" / "bin" / "python3").exists() and not (trees / "free").exists()
    finally:
        os.close(fd)
    assert pbuild("system", "prune", "-f", cwd=root, env=sys_env).code == 0
    assert not (trees / "held").exists()
