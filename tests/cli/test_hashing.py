"""Digests, the stat index, action keys and the host fingerprint."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from pbuild.engine import hashing
from pbuild.engine.api import File, InProcessAction, ProcessAction
from pbuild.engine.hashing import StatIndex, digest_bytes, digest_file, host_fingerprint
from pbuild.engine.keys import action_key, key_material, remote_key
from pbuild.engine.labels import Label

from tests.support.runner import Runner, write_tree

# -- digests ---------------------------------------------------------------------------------------


def test_digests_are_xxh3_128(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert digest_bytes(data) == xxhash.xxh3_128_hexdigest(data)
    assert digest_file(str(path)) == (xxhash.xxh3_128_hexdigest(data), len(data))
    assert len(digest_bytes(b"")) == 32


# -- the stat index --------------------------------------------------------------------------------


@pytest.fixture
def trusted_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat files as old enough to index (the real rule waits 2 s after a change)."""
    monkeypatch.setattr(hashing, "_RACY_NS", 0)


def test_index_hashes_each_file_once_and_persists(tmp_path: Path, trusted_now: None) -> None:
    src = tmp_path / "src.txt"
    src.write_text("hello")
    index = StatIndex(str(tmp_path / "idx" / "stat"))
    first = index.digest(str(src))
    assert first == digest_bytes(b"hello")
    assert index.digest(str(src)) == first
    assert index.hashed_files == 1
    index.save()
    again = StatIndex(str(tmp_path / "idx" / "stat"))
    assert again.lookup(str(src)) == first
    assert again.digest(str(src)) == first
    assert again.hashed_files == 0  # answered from the persisted index


def test_index_notices_changes_even_with_same_size_and_mtime(tmp_path: Path, trusted_now: None) -> None:
    src = tmp_path / "src.txt"
    src.write_text("aaaa")
    index = StatIndex(str(tmp_path / "stat"))
    before = index.digest(str(src))
    st = src.stat()
    src.write_text("bbbb")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: ctime still moves
    assert index.lookup(str(src)) is None
    assert index.digest(str(src)) == digest_bytes(b"bbbb") != before
    # replacing the file (new inode) is noticed too
    replacement = tmp_path / "new.txt"
    replacement.write_text("cccc")
    os.replace(replacement, src)
    assert index.digest(str(src)) == digest_bytes(b"cccc")
    assert index.hashed_files == 3


def test_racily_clean_entries_are_not_persisted(tmp_path: Path) -> None:
    src = tmp_path / "fresh.txt"
    src.write_text("just written")
    index = StatIndex(str(tmp_path / "stat"))
    index.digest(str(src))
    assert index.lookup(str(src)) is not None  # trusted for this run
    index.save()
    assert StatIndex(str(tmp_path / "stat")).lookup(str(src)) is None  # but not by the next one


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\xe3\x00\x00\x00"])
def test_a_damaged_index_only_costs_rehashing(tmp_path: Path, damage: bytes, trusted_now: None) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    (tmp_path / "stat").write_bytes(damage)
    index = StatIndex(str(tmp_path / "stat"))
    assert index.digest(str(src)) == digest_bytes(b"x")
    index.save()
    assert StatIndex(str(tmp_path / "stat")).lookup(str(src)) == digest_bytes(b"x")


def test_index_save_is_atomic(tmp_path: Path, trusted_now: None) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    index = StatIndex(str(tmp_path / "d" / "stat"))
    index.digest(str(src))
    index.save()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["stat"]  # no temp file left


# -- action keys -----------------------------------------------------------------------------------

OWNER = Label("p", "x")
IN = File("p/in.txt")
OUT = File("pbuild-out/p/out.txt", is_source=False)


def process(**changes: object) -> ProcessAction:
    fields: dict[str, object] = dict(owner=OWNER, mnemonic="Genrule", argv=("/bin/bash", "-c", "cp in.txt out"),
                                     inputs=(IN,), outputs=(OUT,), env=(("A", "1"),), workdir="p")
    fields.update(changes)
    return ProcessAction(**fields)  # type: ignore[arg-type]


def key_of(action: ProcessAction | InProcessAction, digest: str = "d1", env: dict[str, str] | None = None) -> str:
    if env is None:
        env = dict(action.env) if isinstance(action, ProcessAction) else {}
    return action_key(key_material(action, {f.path: digest for f in action.inputs}, env))


def test_key_changes_with_what_can_change_outputs() -> None:
    base = key_of(process())
    changed = {
        "argv": key_of(process(argv=("/bin/bash", "-c", "cp in.txt out2"))),
        "env value": key_of(process(), env={"A": "2"}),
        "env added": key_of(process(), env={"A": "1", "B": ""}),
        "input content": key_of(process(), digest="d2"),
        "input path": key_of(process(inputs=(File("p/other.txt"),))),
        "output path": key_of(process(outputs=(File("pbuild-out/p/o2.txt", is_source=False),))),
        "output kind": key_of(process(outputs=(File("pbuild-out/p/out.txt", is_source=False, is_directory=True),))),
        "workdir": key_of(process(workdir="")),
        "salt": key_of(process(salt="v2")),
        "host tools": key_of(process(host_tools=False)),
    }
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_key_ignores_what_cannot_change_outputs() -> None:
    base = key_of(process())
    assert key_of(process(owner=Label("elsewhere", "y"))) == base
    assert key_of(process(mnemonic="Other", progress="Doing things")) == base
    assert key_of(process(timeout_s=5.0)) == base
    assert len(base) == 32 and re.fullmatch(r"[0-9a-f]{32}", base)


def test_host_fingerprint_is_in_process_keys_that_run_host_tools() -> None:
    fingerprint = host_fingerprint()
    assert platform.machine() in fingerprint
    assert "python3" in fingerprint  # the host's python3 that actions run (see the test below)
    assert platform.libc_ver()[0] in fingerprint
    if os.path.exists("/etc/os-release"):
        fields = dict(line.strip().split("=", 1) for line in open("/etc/os-release") if "=" in line)
        assert fields["ID"].strip('"') in fingerprint
    material = json.loads(key_material(process(), {"p/in.txt": "d"}, {}))
    assert material["host"] == fingerprint
    material = json.loads(key_material(process(host_tools=False), {"p/in.txt": "d"}, {}))
    assert "host" not in material


def _write(io: object, params: object) -> None:  # a module-level function, as in-process actions need
    raise AssertionError("never called")


def test_in_process_key_has_function_version_and_params() -> None:
    def call(**changes: object) -> InProcessAction:
        fields: dict[str, object] = dict(owner=OWNER, mnemonic="Write", function=_write, version="1",
                                         params={"a": 1}, inputs=(IN,), outputs=(OUT,))
        fields.update(changes)
        return InProcessAction(**fields)  # type: ignore[arg-type]

    base = key_of(call())
    assert key_of(call(version="2")) != base
    assert key_of(call(params={"a": 2})) != base
    assert key_of(call(function=test_in_process_key_has_function_version_and_params)) != base
    assert key_of(call(), digest="other") != base
    assert key_of(call(owner=Label("q", "z"), mnemonic="X")) == base
    assert "host" not in json.loads(key_material(call(), {"p/in.txt": "d"}, {}))
    assert call().function_name == f"{__name__}:_write"


def test_remote_key_is_sha256_of_the_same_material() -> None:
    material = key_material(process(), {"p/in.txt": "d"}, {})
    assert re.fullmatch(r"[0-9a-f]{64}", remote_key(material))


# -- end to end: what rebuilds and what does not -----------------------------------------------------


def statuses(events: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    return {e["label"]: e["status"] for e in lines if e["type"] == "action"}


def test_rebuilds_exactly_when_an_input_changes(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": """
            # comment
            [a]
            rule = "genrule"
            srcs = ["a.txt"]
            outs = ["a.out"]
            cmd = "cat $< > $@"

            [b]
            rule = "genrule"
            srcs = [":a"]
            outs = ["b.out"]
            cmd = "cat $< $< > $@"
        """,
        "p/a.txt": "one\n",
        "p/unrelated.txt": "x\n",
    })
    events = tmp_path / "events.json"

    def build() -> dict[str, str]:
        result = pbuild("build", "//p:b", "--build-event-json", str(events), cwd=root)
        assert result.code == 0, str(result)
        return statuses(events)

    assert build() == {"//p:a": "executed", "//p:b": "executed"}
    assert build() == {"//p:a": "cached", "//p:b": "cached"}
    (root / "p" / "unrelated.txt").write_text("y\n")
    os.utime(root / "p" / "a.txt")  # touched, same content
    build_file = root / "p" / "BUILD.toml"
    build_file.write_text(build_file.read_text().replace("# comment", "# another comment"))
    assert build() == {"//p:a": "cached", "//p:b": "cached"}
    (root / "p" / "a.txt").write_text("two\n")
    assert build() == {"//p:a": "executed", "//p:b": "executed"}
    assert (root / "pbuild-out" / "p" / "b.out").read_text() == "two\ntwo\n"
    # the same content as an earlier build: both actions come from the cache again
    (root / "p" / "a.txt").write_text("one\n")
    assert build() == {"//p:a": "cached", "//p:b": "cached"}
    assert (root / "pbuild-out" / "p" / "b.out").read_text() == "one\none\n"
    # an output that does not change stops the rebuild from spreading (b's key depends on a's output digest)
    build_file.write_text(build_file.read_text().replace('cmd = "cat $< > $@"', 'cmd = "cat < $< > $@"'))
    assert build() == {"//p:a": "executed", "//p:b": "cached"}


# -- a no-op build reads no file contents -----------------------------------------------------------


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str, str]]:
    """A workspace of 3 packages built twice, then a traced no-op build and a traced build after
    one source changed. Yields (root, cache, no-op trace, one-change trace)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (Debian package strace)")
    tmp = tmp_path_factory.mktemp("noop")
    root = tmp / "ws"
    files: dict[str, str | bytes] = {"WORKSPACE.toml": ""}
    for i in range(3):
        files[f"p{i}/BUILD.toml"] = (
            '[g]\nrule = "genrule"\nsrcs = ["src.txt"]\nouts = ["out.txt"]\ncmd = "cat $< > $@"\n'
            '[copy]\nrule = "genrule"\nsrcs = [":g"]\nouts = ["copy.txt"]\ncmd = "cp $< $@"\n'
        )
        files[f"p{i}/src.txt"] = f"source {i}\n"
    write_tree(root, files)
    runner = Runner(tmp)
    strace = ("strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o")
    time.sleep(0.3)  # past the stat index's racily-clean window
    for _ in range(2):
        result = runner("build", "//...", cwd=root)
        assert result.code == 0, str(result)
    time.sleep(0.3)
    result = runner("build", "//...", cwd=root, prefix=(*strace, str(tmp / "noop")))
    assert result.code == 0, str(result)
    assert "6 cached" in result.summary
    (root / "p0" / "src.txt").write_text("changed\n")
    result = runner("build", "//...", cwd=root, prefix=(*strace, str(tmp / "change")))
    assert result.code == 0, str(result)
    assert "4 cached, 2 executed" in result.summary
    yield root, runner.cache, (tmp / "noop").read_text(), (tmp / "change").read_text()


def opened(trace: str, below: Path) -> list[str]:
    """Files below ``below`` the traced process opened successfully (not folders, not failures)."""
    found = []
    for line in trace.splitlines():
        match = re.search(r'open(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", ([^)]*)\) = (-?\d+)', line)
        if not match or int(match.group(3)) < 0 or "O_DIRECTORY" in match.group(2):
            continue
        if match.group(1).startswith(str(below) + "/"):
            found.append(match.group(1))
    return found


def test_noop_build_reads_no_source_and_no_blob(traced: tuple[Path, Path, str, str]) -> None:
    root, cache, noop, _ = traced
    assert opened(noop, root), "the trace saw nothing: the check is broken"
    assert [p for p in opened(noop, root) if not p.endswith(("/BUILD.toml", "/WORKSPACE.toml"))] == []
    assert [p for p in opened(noop, cache) if "/cas/" in p] == []


def test_one_source_change_reads_only_that_source_and_its_outputs(traced: tuple[Path, Path, str, str]) -> None:
    root, cache, _, change = traced
    sources = {p for p in opened(change, root) if not p.endswith(("/BUILD.toml", "/WORKSPACE.toml"))}
    assert sources == {str(root / "p0" / "src.txt")}  # hashed, and copied into the exec root
    rebuilt = {digest_file(str(root / "pbuild-out" / "p0" / name))[0] for name in ("out.txt", "copy.txt")}
    blobs = {Path(p).name.removesuffix(".x") for p in opened(change, cache) if "/cas/" in p}
    assert blobs <= rebuilt, "blobs of unchanged actions were read"


# -- the up-to-date fast path notices every change that matters --------------------------------------


def test_fast_path_notices_glob_package_and_ignore_changes(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[cat]\nrule = "genrule"\nsrcs = { glob = ["**/*.txt"], allow_empty = true }\n'
                        'outs = ["cat.out"]\ncmd = "cat $(SRCS) > $@"\n',
        "p/a.txt": "a\n",
        "p/sub/s.txt": "s\n",
        "q/BUILD.toml": '[use]\nrule = "genrule"\nsrcs = ["//p:cat"]\nouts = ["use.out"]\ncmd = "cat $< > $@"\n',
    })
    out = root / "pbuild-out" / "q" / "use.out"

    def build() -> str:
        result = pbuild("build", "//q:use", cwd=root)
        assert result.code == 0, str(result)
        return out.read_text()

    assert build() == "a\ns\n"
    (root / "p" / "sub" / "t.txt").write_text("t\n")  # a new file deep in a dependency's glob
    assert build() == "a\ns\nt\n"
    (root / "p" / "sub" / "BUILD.toml").write_text("")  # sub becomes a package: its files leave the glob
    assert build() == "a\n"
    (root / "p" / "sub" / "BUILD.toml").unlink()
    (root / ".pbuildignore").write_text("p/a.txt\n")
    assert build() == "s\nt\n"
    (root / "p" / "sub" / "s.txt").unlink()
    assert build() == "t\n"
    (root / "p" / "sub" / "t.txt").unlink()
    assert build() == ""  # allow_empty: a glob that now matches nothing is no error


def test_source_date_epoch_is_part_of_the_key(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[sde]\nrule = "genrule"\nouts = ["sde.out"]\ncmd = "echo $$SOURCE_DATE_EPOCH > $@"\n',
    })
    assert pbuild("build", "//p:sde", cwd=root).code == 0
    assert (root / "pbuild-out" / "p" / "sde.out").read_text() == "0\n"
    result = pbuild("build", "//p:sde", cwd=root, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "sde.out").read_text() == "1700000000\n"


def test_fast_path_notices_a_file_that_now_shadows_a_target(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[gen]\nrule = "genrule"\nouts = ["gen.txt"]\ncmd = "echo generated > $@"\n'
                        '[use]\nrule = "genrule"\nsrcs = ["gen"]\nouts = ["use.txt"]\ncmd = "cat $< > $@"\n',
    })
    out = root / "pbuild-out" / "p" / "use.txt"
    for _ in range(2):
        assert pbuild("build", "//p:use", cwd=root).code == 0
        assert out.read_text() == "generated\n"  # "gen" names the target while no file has that name
    (root / "p" / "gen").write_text("file\n")  # now a file of the package has the name: files come first
    result = pbuild("build", "//p:use", cwd=root)
    assert result.code == 0, str(result)
    assert out.read_text() == "file\n"  # what a build with an empty cache gives


def test_host_fingerprint_describes_the_host_tools_actions_run() -> None:
    """The python3 that actions find on the sandbox PATH is in the fingerprint, not pbuild's own Python."""
    from pbuild.engine.execroot import SANDBOX_PATH

    python3 = shutil.which("python3", path=SANDBOX_PATH)
    if python3 is None:
        pytest.skip("no python3 on the sandbox PATH")
    real = os.path.realpath(python3)
    parts = host_fingerprint().split("|")
    assert any(os.path.basename(real) in part and str(os.stat(real).st_size) in part for part in parts), parts
    if os.path.realpath(sys.executable) != real:
        own = ".".join(str(v) for v in sys.version_info[:3])
        assert own not in parts


def test_the_build_right_after_an_execution_is_a_fast_noop(tmp_path: Path, pbuild: Runner) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (Debian package strace)")
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[g]\nrule = "genrule"\nsrcs = ["in.txt"]\nouts = ["g.txt"]\ncmd = "cat $< > $@"\n',
        "p/in.txt": "x\n",
    })
    time.sleep(0.3)  # past the racily-clean window
    assert pbuild("build", "//p:g", cwd=root).code == 0
    time.sleep(0.3)
    trace = tmp_path / "trace"
    result = pbuild("build", "//p:g", cwd=root, prefix=("strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace)))
    assert result.code == 0, str(result)
    assert str(root / "p" / "in.txt") not in opened(trace.read_text(), root)
