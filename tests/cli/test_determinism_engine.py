"""Same inputs, same bytes: one genrule graph built from two folders under different umask, TZ,
locale, HOME and --jobs gives identical outputs and identical action keys (DESIGN.md, invariants)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.runner import SETPRIV_NOBODY, Runner, chown_tree, tree_digest, write_tree

# Commands that would leak the host's conditions into outputs if the engine did not fix them.
GRAPH = {
    "WORKSPACE.toml": "",
    "gen/BUILD.toml": """
        [clock]
        rule = "genrule"
        outs = ["clock.txt"]
        cmd = "date -u -d @$$SOURCE_DATE_EPOCH > $@; date -d @0 +%Z%z >> $@; echo $$TZ $$LANG $$LC_ALL >> $@"

        [process]
        rule = "genrule"
        outs = ["process.txt"]
        cmd = "umask > $@; pwd >> $@; id -u >> $@; id -g >> $@; hostname >> $@; echo $$HOME $$TMPDIR >> $@"

        [environment]
        rule = "genrule"
        outs = ["env.txt"]
        cmd = "env | grep -v -e '^_=' -e '^SHLVL=' | sort > $@"

        [created]
        rule = "genrule"
        srcs = ["data.txt"]
        outs = ["modes.txt", "tool.sh"]
        cmd = "set -- $(OUTS); touch /tmp/f; mkdir /tmp/d; stat -c '%a %n' /tmp/f /tmp/d > $1; printf 'echo hi\\\\n' > $2; chmod +x $2; ls -1 /tmp >> $1"

        [sorted]
        rule = "genrule"
        srcs = { glob = ["inputs/*.txt"] }
        outs = ["listing.txt"]
        cmd = "echo $(SRCS) > $@; ls inputs >> $@; cat $(SRCS) | LC_ALL= sort >> $@"
    """,
    "gen/data.txt": "data\n",
    **{f"gen/inputs/{name}.txt": f"{name}\n" for name in ("b", "a", "Z", "é", "10", "9")},
    "chain/BUILD.toml": '[c0]\nrule = "genrule"\nsrcs = ["//gen:sorted"]\nouts = ["c0.txt"]\ncmd = "cp $< $@"\n'
    + "".join(
        f'[c{i}]\nrule = "genrule"\nsrcs = [":c{i - 1}", "//gen:clock"]\nouts = ["c{i}.txt"]\n'
        f'cmd = "cat $(SRCS) | md5sum > $@"\n'
        for i in range(1, 12)
    ),
}


def build(tmp_path: Path, name: str, *, umask: str, tz: str, jobs: str, lang: str,
          as_nobody: bool = False) -> tuple[Path, dict[str, str]]:
    root = tmp_path / name / "deeper" / "workspace"
    write_tree(root, GRAPH)
    if as_nobody:
        chown_tree(tmp_path / name, 65534, 65534)
    runner = Runner(tmp_path / name)
    events = tmp_path / name / "events.json"
    result = runner(
        "build", "//...", "--jobs", jobs, "--build-event-json", str(events),
        cwd=root,
        cache=tmp_path / name / "cache",
        env={"TZ": tz, "LANG": lang, "LC_ALL": lang, "HOME": str(tmp_path / name),
             "XDG_CONFIG_HOME": str(tmp_path / name / "config")},
        prefix=SETPRIV_NOBODY if as_nobody else (),
        umask=int(umask, 8),
    )
    assert result.code == 0, str(result)
    assert "executed" in result.summary and "cached" not in result.summary  # each build runs every action
    keys = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "action":
            keys[event["label"]] = event["key"]
    return root, keys


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return build(tmp_path_factory.mktemp("baseline"), "one", umask="022", tz="UTC", jobs="1", lang="C.UTF-8")


def compare(baseline: tuple[Path, dict[str, str]], other: tuple[Path, dict[str, str]], *,
            same_keys: bool = True) -> None:
    (first_root, first_keys), (second_root, second_keys) = baseline, other
    first = tree_digest(first_root / "pbuild-out")
    second = tree_digest(second_root / "pbuild-out")
    assert len([name for name in first if not name.startswith(".")]) == 18  # outputs, besides pbuild's marker
    differing = {name: (first[name], second.get(name)) for name in first if first[name] != second.get(name)}
    assert differing == {}
    assert first == second
    if same_keys:
        assert first_keys == second_keys


def test_same_graph_same_bytes_from_another_folder_tz_locale_and_jobs(
    baseline: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    other = build(tmp_path, "two-other-folder", umask="022", tz="Pacific/Chatham", jobs="8", lang="C")
    compare(baseline, other)
    # the outputs hold what the engine fixed, not the host's values
    first_root, second_root = baseline[0], other[0]
    process = (first_root / "pbuild-out" / "gen" / "process.txt").read_text()
    assert str(first_root) not in process and str(second_root) not in process
    assert "Thu Jan  1 00:00:00 UTC 1970" in (first_root / "pbuild-out" / "gen" / "clock.txt").read_text()
    first = tree_digest(first_root / "pbuild-out")
    assert first["gen/tool.sh"][1] == 0o555 and first["gen/modes.txt"][1] == 0o444


def test_same_graph_same_bytes_under_another_umask(baseline: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    compare(baseline, build(tmp_path, "three", umask="077", tz="UTC", jobs="2", lang="C.UTF-8"))


def test_same_graph_same_bytes_for_an_unprivileged_user(baseline: tuple[Path, dict[str, str]],
                                                        nobody_dir: Path) -> None:
    # Keys are not compared: here uid 65534 cannot read the venv's interpreter home under /root, so its
    # pbuild runs another Python build, and the host fingerprint holds pbuild's own Python version.
    compare(baseline, build(nobody_dir, "four", umask="002", tz="UTC", jobs="2", lang="C.UTF-8", as_nobody=True),
            same_keys=False)
