"""bench/runcheck.py refuses a figure whose run was not the kind it claims."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.runner import Runner, WorkspaceFactory

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


# -- the checks on the events of real builds (the CLI on a small workspace of genrules) ----------

GENRULES = {
    "p/BUILD.toml": """
        [upper]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["upper.txt"]
        cmd = "tr a-z A-Z < $< > $@"

        [other]
        rule = "genrule"
        outs = ["other.txt"]
        cmd = "echo other > $@"

        [broken]
        rule = "genrule"
        outs = ["broken.txt"]
        cmd = "exit 1"
    """,
    "p/in.txt": "input\n",
}


def build(pbuild: Runner, ws: Path, events: Path, *targets: str) -> Path:
    pbuild("build", *targets, "-k", "--build-event-json", runcheck.fresh(events), cwd=ws)
    return events


def test_named_mnemonics_built_and_noop_on_real_builds(workspace: WorkspaceFactory, pbuild: Runner,
                                                       tmp_path: Path) -> None:
    ws, events = workspace(GENRULES), tmp_path / "events.jsonl"
    cold = build(pbuild, ws, events, "//p:upper", "//p:other")
    runcheck.expect_cold(cold, "cold")
    runcheck.expect_built(cold, "built")
    runcheck.expect_mnemonics(cold, "cold", {"Genrule": 2})
    with pytest.raises(runcheck.WrongRunKind, match=r"expected exactly 1 Genrule executed.*Genrule:executed': 2"):
        runcheck.expect_mnemonics(cold, "edit", {"Genrule": 1})
    with pytest.raises(runcheck.WrongRunKind, match="no action executed"):
        runcheck.expect_noop(cold, "no-op")

    again = build(pbuild, ws, events, "//p:upper", "//p:other")  # the replayed fast path: all cached
    runcheck.expect_noop(again, "no-op")
    runcheck.expect_mnemonics(again, "no-op", {})
    with pytest.raises(runcheck.WrongRunKind, match="every action executed"):
        runcheck.expect_cold(again, "cold")
    with pytest.raises(runcheck.WrongRunKind, match="1 cached TestRunner results"):
        runcheck.expect_tests_cached(again, "cached tests", 1)  # a build, not a test run

    (ws / "p" / "in.txt").write_text("changed\n")
    edit = build(pbuild, ws, events, "//p:upper", "//p:other")
    runcheck.expect_mnemonics(edit, "edit", {"Genrule": 1})
    runcheck.expect_executed(edit, "edit", 1)


def test_a_failed_build_is_no_premise(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    failed = build(pbuild, workspace(GENRULES), tmp_path / "events.jsonl", "//p:other", "//p:broken")
    with pytest.raises(runcheck.WrongRunKind, match="a finished build with no failed action.*Genrule:failed"):
        runcheck.expect_built(failed, "an image to unpack")
    with pytest.raises(runcheck.WrongRunKind, match="exactly 1 Genrule"):
        runcheck.expect_mnemonics(failed, "edit", {"Genrule": 1})


def test_fresh_leaves_no_stale_events_and_a_run_without_events_is_the_fast_path(tmp_path: Path) -> None:
    stale = events(tmp_path, ("Genrule", "executed"))
    assert runcheck.fresh(stale) == str(stale) and not stale.exists()
    with pytest.raises(runcheck.WrongRunKind, match="did not finish"):  # no file: no build, no figure
        runcheck.expect_noop(events(tmp_path, summary=False), "no-op")
    with pytest.raises(runcheck.WrongRunKind, match="no action executed"):
        runcheck.expect_noop(events(tmp_path, ("PyStage", "executed")), "run, nothing to rebuild")


def test_cached_test_results(tmp_path: Path) -> None:
    runcheck.expect_tests_cached(events(tmp_path, ("PyStage", "cached"), ("TestRunner", "cached")), "tests", 1)
    with pytest.raises(runcheck.WrongRunKind, match="2 cached TestRunner results"):
        runcheck.expect_tests_cached(events(tmp_path, ("TestRunner", "cached")), "tests", 2)
    with pytest.raises(runcheck.WrongRunKind, match="TestRunner:executed"):
        runcheck.expect_tests_cached(events(tmp_path, ("TestRunner", "executed")), "tests", 1)


DIGEST = "sha256:" + "ab" * 32


def pulled(downloaded: int, size: int, cached: int) -> str:
    """The report ``pbuild pull`` prints (rules/oci/imagecmds.py)."""
    return (f"pulled r.example/app:bench\n  digest {DIGEST} (linux/amd64), {downloaded} blob(s) downloaded "
            f"({size:,} bytes), {cached} from the cache\n")


def test_cold_and_warm_pulls() -> None:
    # By tag, the manifest stored while resolving the tag is then read from the cache.
    cold = runcheck.expect_pull(pulled(3, 1_234_567, 1), "cold pull", cold=True)
    assert (cold.digest, cold.downloaded, cold.bytes_downloaded, cold.cached) == (DIGEST, 3, 1_234_567, 1)
    runcheck.expect_pull(pulled(4, 1_234_567, 0), "cold pull", cold=True, by_tag=False)
    runcheck.expect_pull(pulled(0, 0, 4), "warm pull", cold=False)
    with pytest.raises(runcheck.WrongRunKind, match=r"'cold pull': expected every blob downloaded \(1 from the"):
        runcheck.expect_pull(pulled(1, 10, 3), "cold pull", cold=True)
    with pytest.raises(runcheck.WrongRunKind, match="every blob downloaded"):
        runcheck.expect_pull(pulled(3, 10, 1), "cold pull", cold=True, by_tag=False)
    with pytest.raises(runcheck.WrongRunKind, match="no blob downloaded"):
        runcheck.expect_pull(pulled(1, 10, 2), "warm pull", cold=False)
    with pytest.raises(runcheck.WrongRunKind, match="report line"):
        runcheck.expect_pull("pulled something\n", "warm pull", cold=False)


def test_refuse_reads_like_the_event_checks() -> None:
    refusal = runcheck.refuse("layer", "a layer of 3 files", "it holds 2")
    assert isinstance(refusal, SystemExit)
    assert str(refusal) == "bench: refusing to report 'layer': expected a layer of 3 files, but it holds 2"
