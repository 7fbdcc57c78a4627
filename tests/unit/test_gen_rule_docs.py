"""docs/rules.md is generated from the rule schemas (engine/gen_rule_docs.py) and cannot drift."""

from __future__ import annotations

import subprocess
import sys

from pbuild.engine import gen_rule_docs
from pbuild.engine.api import COMMON_ATTRS
from pbuild.engine.ruleset import RuleSet

from tests.support.paths import REPO

DOCS = REPO / "docs" / "rules.md"


def test_committed_docs_equal_the_generator_output() -> None:
    expected = gen_rule_docs.render()
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/rules.md is out of date: run `python -m pbuild.engine.gen_rule_docs > docs/rules.md`"
    )


def test_the_command_writes_the_same_text() -> None:
    proc = subprocess.run([sys.executable, "-m", "pbuild.engine.gen_rule_docs"], capture_output=True, text=True,
                          check=True)
    assert proc.stdout == gen_rule_docs.render()
    assert proc.stderr == ""


def test_every_rule_and_attribute_is_documented() -> None:
    text = gen_rule_docs.render()
    ruleset = RuleSet()
    for name, definition in ruleset.all().items():
        assert f"### `{name}`" in text
        assert definition.doc.split()[0] in text
        for attr_name, spec in definition.attrs.items():
            assert spec.doc.strip(), f"{name}.{attr_name} has no doc string"
            assert f"| `{attr_name}` | `{spec.kind}`" in text, f"{name}.{attr_name}"
    for attr_name in COMMON_ATTRS:
        assert f"| `{attr_name}` |" in text


def test_tables_are_well_formed() -> None:
    """Every row of a table has as many cells as its header (a stray | in a doc string would break it)."""
    columns = 0
    for line in gen_rule_docs.render().splitlines():
        if not line.startswith("|"):
            columns = 0
            continue
        cells = len(line.replace("\\|", "").split("|"))
        if columns == 0:
            columns = cells
        assert cells == columns, line


def test_the_guide_covers_the_rule_api() -> None:
    text = gen_rule_docs.render()
    for needle in ("rule(", "attr.label_list", "RuleContext", "ctx.actions.run", "ctx.actions.call",
                   "ctx.actions.write", "DefaultInfo", "RunInfo", "TestInfo", "Provider", "target_generator",
                   "RULES", 'plugins = ["build_rules/stamp.py"]', "ctx.fail", "read_workspace_file"):
        assert needle in text, needle
    assert gen_rule_docs.EXAMPLE_PLUGIN in text  # the worked example, exactly as tests/cli/test_plugins.py builds it
