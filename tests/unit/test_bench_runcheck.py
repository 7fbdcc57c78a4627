"""bench/runcheck.py refuses a figure whose run was not the kind it claims."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

_spec = importlib.util.spec_from_file_location("runcheck", REPO / "bench" / "runcheck.py")
assert _spec and _spec.loader
runcheck = importlib.util.module_from_spec(_spec)
sys.modules["runcheck"] = runcheck  # dataclasses look their module up by name
_spec.loader.exec_module(runcheck)


def events(tmp_path: Path, *statuses: tuple[str, str], summary: bool = True) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [{"type": "action", "label": "//a:b", "mnemonic": m, "key": "k", "status": s} for m, s in statuses]
    if summary:
        lines.append({"type": "summary", "actions": len(statuses)})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_cold_figure_needs_every_action_executed(tmp_path: Path) -> None:
    runcheck.expect_cold(events(tmp_path, ("DebLayer", "executed"), ("Image", "executed")), "cold")
    cached = events(tmp_path, ("DebLayer", "cached"), ("Image", "executed"))
    with pytest.raises(runcheck.WrongRunKind, match="refusing to report 'cold'.*DebLayer:cached"):
        runcheck.expect_cold(cached, "cold")


def test_downloads_may_come_from_the_cache_when_the_bench_says_so(tmp_path: Path) -> None:
    path = events(tmp_path, ("DebFetch", "cached"), ("DebLayer", "executed"))
    runcheck.expect_cold(path, "cold", may_be_cached=["DebFetch"])
    with pytest.raises(runcheck.WrongRunKind):
        runcheck.expect_cold(events(tmp_path, ("DebFetch", "cached")), "cold", may_be_cached=["DebFetch"])


def test_noop_incremental_and_remote_figures(tmp_path: Path) -> None:
    runcheck.expect_noop(events(tmp_path, ("Genrule", "cached")), "no-op")
    with pytest.raises(runcheck.WrongRunKind, match="no action executed"):
        runcheck.expect_noop(events(tmp_path, ("Genrule", "executed")), "no-op")
    two = events(tmp_path, ("AppLayer", "executed"), ("Image", "executed"), ("DebLayer", "cached"))
    runcheck.expect_executed(two, "edit", 2)
    with pytest.raises(runcheck.WrongRunKind, match="exactly 10 actions"):
        runcheck.expect_executed(two, "one change", 10)
    runcheck.expect_all_remote(events(tmp_path, ("Genrule", "remote_cached")), "remote")
    with pytest.raises(runcheck.WrongRunKind):
        runcheck.expect_all_remote(events(tmp_path, ("Genrule", "remote_cached"), ("Genrule", "cached")), "remote")


def test_a_build_that_did_not_finish_reports_no_figure(tmp_path: Path) -> None:
    with pytest.raises(runcheck.WrongRunKind, match="did not finish"):
        runcheck.expect_noop(events(tmp_path, ("Genrule", "cached"), summary=False), "no-op")
