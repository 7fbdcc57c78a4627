"""The engine's stages used on their own, and the typed records that flow between them: output
collection and materialization without a scheduler, frozen build records, the ActionStatus enum,
checked content digests in AC entries, and ``ctx.fail`` typed as never returning."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pbuild.engine.api import ActionIO, File, GeneratorContext, InProcessAction, RuleContext
from pbuild.engine.build import BuildRequest
from pbuild.engine.errors import BuildFailed
from pbuild.engine.events import Reporter
from pbuild.engine.hashing import StatIndex, digest_bytes
from pbuild.engine.labels import Label
from pbuild.engine.materialize import Materializer
from pbuild.engine.outputs import collect_outputs
from pbuild.engine.scheduler import ActionStatus, ExecOptions, Executor
from pbuild.engine.store import ActionResult, LocalStore, OutputRecord

from tests.support.paths import REPO

OWNER = Label.parse("//p:t")


def write_greeting(io_: ActionIO, params: Mapping[str, Any]) -> None:
    with open(io_.output_path("pbuild-out/p/hello.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"hello {params['who']}\n")


def greeting_action() -> InProcessAction:
    return InProcessAction(owner=OWNER, mnemonic="Greet", function=write_greeting, version="1",
                           params={"who": "world"}, inputs=(), outputs=(File("pbuild-out/p/hello.txt", False),))


def executor(root: Path, cache: Path) -> Executor:
    store = LocalStore(str(cache))
    return Executor(workspace_root=str(root), store=store, stat_index=StatIndex(str(cache / "stat")),
                    reporter=Reporter(stream=io.StringIO(), quiet=True, interactive=False),
                    options=ExecOptions(jobs=1))


def test_collect_outputs_takes_declared_outputs_into_the_store(tmp_path: Path) -> None:
    top = tmp_path / "execroot"
    (top / "pbuild-out/p/tree/sub").mkdir(parents=True)
    (top / "pbuild-out/p/a.txt").write_text("a\n")
    (top / "pbuild-out/p/tree/sub/b.txt").write_text("b\n")
    os.symlink("sub/b.txt", top / "pbuild-out/p/tree/link.txt")  # replaced by the file it names
    store = LocalStore(str(tmp_path / "cache"))
    action = dataclasses.replace(greeting_action(), outputs=(
        File("pbuild-out/p/a.txt", False), File("pbuild-out/p/tree", False, is_directory=True)))

    res = collect_outputs(action, str(top), store)

    assert res.directories == ("pbuild-out/p/tree",)
    assert [(r.path, r.digest) for r in res.outputs] == [
        ("pbuild-out/p/a.txt", digest_bytes(b"a\n")),
        ("pbuild-out/p/tree/link.txt", digest_bytes(b"b\n")),
        ("pbuild-out/p/tree/sub/b.txt", digest_bytes(b"b\n")),
    ]
    assert all(store.verify_blob(r.digest, r.executable) for r in res.outputs)

    missing = dataclasses.replace(action, outputs=(File("pbuild-out/p/gone.txt", False),))
    with pytest.raises(BuildFailed, match="did not write its declared output pbuild-out/p/gone.txt"):
        collect_outputs(missing, str(top), store)


def test_the_materializer_serves_no_damaged_blob(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    store = LocalStore(str(tmp_path / "cache"))
    source = tmp_path / "f"
    source.write_text("content\n")
    digest, size = store.put_file(str(source), executable=False, move=False)
    record = OutputRecord("pbuild-out/p/f", digest, size, False)
    blob = Path(store.blob_path(digest))
    blob.chmod(0o644)
    blob.write_text("damaged\n")

    materializer = Materializer(str(root), store, StatIndex(str(tmp_path / "stat")))
    assert not materializer.materialize_result(ActionResult((record,)))
    assert not (root / "pbuild-out/p/f").exists() and not blob.exists()  # removed, so it is rebuilt
    with pytest.raises(BuildFailed, match="damaged"):
        materializer.checked_blob(record)

    store.put_file(str(source), executable=False, move=False)
    assert materializer.materialize_result(ActionResult((record,)))
    assert (root / "pbuild-out/p/f").read_text() == "content\n"
    assert (root / "pbuild-out/p/f").stat().st_ino == blob.stat().st_ino


def test_build_results_are_frozen_records_with_enum_statuses(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    action = greeting_action()

    first = executor(root, tmp_path / "cache").execute([action])
    second = executor(root, tmp_path / "cache").execute([action])

    assert first.ok and second.ok
    assert first.status_of(action) is ActionStatus.EXECUTED
    assert second.status_of(action) is ActionStatus.CACHED
    assert first.status_of(greeting_action()) is None  # looked up by identity: not one of these
    assert [o.status for o in second.outcomes] == [ActionStatus.CACHED]
    assert second.events == [("//p:t", "Greet", first.outcomes[0].key)]
    assert (root / "pbuild-out/p/hello.txt").read_text() == "hello world\n"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.skipped = 3  # type: ignore[misc]
    assert isinstance(first.outcomes, tuple) and isinstance(first.failures, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        BuildRequest(patterns=("//...",)).jobs = 1  # type: ignore[misc]


def test_a_failed_action_has_the_failed_status(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    action = dataclasses.replace(greeting_action(), outputs=(File("pbuild-out/p/other.txt", False),))

    result = executor(root, tmp_path / "cache").execute([action])

    assert not result.ok
    assert result.status_of(action) is ActionStatus.FAILED
    failure = result.failure_of(action)
    assert failure is not None and "writes undeclared output" in failure.error.message


def test_an_ac_entry_whose_digest_is_not_a_content_digest_is_a_miss(tmp_path: Path) -> None:
    """A digest names a blob path: one such as ``../../victim`` must not reach the CAS, which
    re-hashes a blob it doubts and deletes it when damaged."""
    store = LocalStore(str(tmp_path / "cache"))
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    key = digest_bytes(b"some action")
    store.put_action(key, ActionResult((OutputRecord("pbuild-out/p/f", digest_bytes(b"x"), 1, False),)))
    entry = Path(store.ac_dir) / key[:2] / key
    raw = json.loads(entry.read_bytes())
    raw["outputs"][0][1] = "../../../victim"
    entry.write_text(json.dumps(raw))

    assert store.get_action(key) is None
    assert victim.read_text() == "keep me\n"


def test_ctx_fail_never_returns() -> None:
    for context in (RuleContext, GeneratorContext):
        assert typing.get_type_hints(context.fail)["return"] is typing.NoReturn


def test_no_rule_has_code_after_ctx_fail() -> None:
    """Code after ``ctx.fail(...)`` in the same block never runs (``fail`` is ``NoReturn``)."""
    found = []
    for path in sorted((REPO / "rules").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, name, None)
                if not isinstance(block, list):
                    continue
                for stmt, after in zip(block, block[1:], strict=False):
                    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and \
                            isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr == "fail":
                        found.append(f"{path.relative_to(REPO)}:{after.lineno}")
    assert found == []


def test_mypy_is_strict_on_the_engine() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    overrides = config["tool"]["mypy"]["overrides"]
    assert any(o.get("module") == "pbuild.engine.*" and o.get("strict") is True for o in overrides)
