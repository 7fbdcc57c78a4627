"""Generate ``docs/rules.md`` from the rule schemas, so the rule reference cannot drift.

Run ``python -m pbuild.engine.gen_rule_docs > docs/rules.md``. The first part of the page (how to
write a rule) is the prose below; the reference is built from every rule family the rule set
knows (``pbuild.engine.ruleset.BUILTIN_FAMILIES``): each rule's doc string and, for each
attribute, its type, default, whether it is required, and its doc string.
``tests/unit/test_gen_rule_docs.py`` fails when the committed page differs from this output.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pbuild.engine.api import COMMON_ATTRS, Attr, GeneratorDef, RuleDef
from pbuild.engine.ruleset import BUILTIN_FAMILIES
from pbuild.engine.toolchainconf import rule_schema

# The worked example of the guide. tests/cli/test_plugins.py builds a workspace with exactly this file
# as its plugin, so the example in the docs is known to work.
EXAMPLE_PLUGIN = '''\
"""Workspace rules: stamp text files with a version, and list the versions of stamped targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbuild.engine.api import ActionIO, DefaultInfo, Provider, RuleContext, attr, rule


@dataclass(frozen=True)
class StampInfo(Provider):
    """What a stamp target tells the targets that depend on it."""

    version: str


def write_stamped(io: ActionIO, params: Mapping[str, Any]) -> None:
    """In-process action: the inputs, one after the other, then a version line."""
    with open(io.output_path(params["out"]), "w", encoding="utf-8") as out:
        for path in params["srcs"]:
            with open(io.input_path(path), encoding="utf-8") as src:
                out.write(src.read())
        out.write(f"version {params['version']}\\n")


@rule(
    "stamp",
    doc="Concatenates `srcs` into `<name>.txt` and appends the line `version <version>`.",
    attrs={
        "srcs": attr.label_list("Text files (or targets producing them) to stamp.",
                                allow_files=["txt"], required=True),
        "version": attr.string("The version to write; starts with a digit.", required=True),
        "checksum": attr.boolean("Also write `<name>.sha256` with the host's sha256sum."),
    },
)
def stamp(ctx: RuleContext) -> Sequence[Provider]:
    version = ctx.attr.version
    if not version[:1].isdigit():
        ctx.fail(f"version {version!r} must start with a digit", attr="version", hint='version = "1.0"')
    out = ctx.declare_file(f"{ctx.label.name}.txt")
    ctx.actions.call(
        write_stamped,
        version="1",  # bump when write_stamped writes something else for the same params
        params={"srcs": [f.path for f in ctx.files.srcs], "out": out.path, "version": version},
        inputs=ctx.files.srcs,
        outputs=[out],
        mnemonic="Stamp",
    )
    files = [out]
    if ctx.attr.checksum:
        sums = ctx.declare_file(f"{ctx.label.name}.sha256")
        ctx.actions.run(
            argv=["/bin/sh", "-c", f"sha256sum {out.path} > {sums.path}"],
            inputs=[out],
            outputs=[sums],
            mnemonic="Checksum",
        )
        files.append(sums)
    return [DefaultInfo(files=tuple(files)), StampInfo(version)]


@rule(
    "release_notes",
    doc="Writes `<name>.md`, a list of the versions of the `stamps` targets.",
    attrs={"stamps": attr.label_list("Targets of the stamp rule.", providers=[StampInfo], required=True)},
)
def release_notes(ctx: RuleContext) -> Sequence[Provider]:
    versions = sorted(target[StampInfo].version for target in ctx.attr.stamps)
    notes = ctx.declare_file(f"{ctx.label.name}.md")
    ctx.actions.write(notes, "".join(f"- {v}\\n" for v in versions))
    return [DefaultInfo(files=(notes,))]


RULES = [stamp, release_notes]
'''

EXAMPLE_WORKSPACE = """\
[workspace]
name = "example"
plugins = ["build_rules/stamp.py"]
"""

EXAMPLE_BUILD = """\
[readme]
rule = "stamp"
srcs = ["README.txt"]
version = "1.2"

[changes]
rule = "stamp"
srcs = ["CHANGES.txt", ":readme"]
version = "1.3"
checksum = true

[notes]
rule = "release_notes"
stamps = [":readme", ":changes"]
"""

GUIDE = """\
# Rules

pbuild's rules turn the targets of `BUILD.toml` files into actions. This page has two parts: how to
write a rule (the public rule API, `pbuild.engine.api`), and the reference of every built-in rule,
generated from the rule schemas by `python -m pbuild.engine.gen_rule_docs > docs/rules.md`.
Do not edit the reference by hand: change the rule's schema and regenerate; a test fails when
this page and the schemas disagree.

## Targets

A target is a table of a `BUILD.toml`: `[name]` with `rule = "..."` and the rule's attributes.

```toml
[greeting]
rule = "genrule"
srcs = ["name.txt"]
outs = ["greeting.txt"]
cmd = "echo \\"Hello, $(cat $<)!\\" > $@"
```

Labels name targets: `//pkg/path:name`, `:name` in the same package, `//pkg/path` for
`//pkg/path:path`. Attributes that take labels also take file names of the package (`"name.txt"`),
and file lists take globs: `srcs = { glob = ["**/*.py"], exclude = ["**/test_*.py"] }` (gitignore
syntax; a leading `/` anchors a pattern at the package folder; folders with their own `BUILD.toml`
and paths listed in `.pbuildignore` are not searched). As in Bazel, a pattern that leaves the
package (`../x`) is an error, and so is an include pattern that matches no file, unless the table
says `allow_empty = true`. Target names, like package names, may not start or end with `/`, hold
`//`, or have `.`, `..` or `...` as a path segment. Every target also accepts `tags` and
`visibility` (see [Attributes of every rule](#attributes-of-every-rule)).

Packages below `//@pbuild/` are pbuild's own, read from its installation rather than the
workspace (as Bazel's `@bazel_tools`): the tools pbuild runs, such as `//@pbuild/python:pytest`,
the default `pytest` of every `py_test` (see `docs/python.md`).

## Writing a rule

A rule is a Python function that receives a `RuleContext`, declares actions and returns
providers. Rules never run commands or read files themselves: the actions they declare do, when
the engine executes them (sandboxed, cached by content, at most once). Built-in rules and your own
rules use the same API, `pbuild.engine.api`; user errors are `pbuild.engine.errors.PbuildError`s.

### Declaring a rule: `rule()` and `attr.*`

```python
from pbuild.engine.api import DefaultInfo, RuleContext, attr, rule

@rule("my_rule", doc="What it does (shown in docs/rules.md).", attrs={
    "srcs": attr.label_list("Input files.", allow_files=["txt"]),
    "out": attr.output("The file to write.", required=True),
})
def my_rule(ctx: RuleContext) -> list:
    ...

RULES = [my_rule]
```

`rule(name, *, attrs, doc, executable=False, test=False)` turns the implementation into a
`RuleDef`. Every attribute has a doc string; the engine checks a target's attributes against the
schema before your function runs (unknown names, wrong types, missing required attributes, files
that do not exist), and reports the file, line, target and a fix. The attribute constructors:

| constructor | TOML value | in `ctx.attr` |
| --- | --- | --- |
| `attr.string(doc, default=None, required=False, values=())` | string (one of `values` if given) | `str` |
| `attr.string_list(doc, default=(), required=False)` | list of strings | `tuple[str, ...]` |
| `attr.string_dict(doc, default=None, required=False)` | table of strings | `dict[str, str]` |
| `attr.integer(doc, default=None, required=False)` | integer | `int` |
| `attr.boolean(doc, default=False)` | `true` / `false` | `bool` |
| `attr.dict(doc, default=None, required=False, fields=None)` | any table (validate it in the rule); with `fields`, a table of tables whose `attr.label` fields are dependencies | `dict` (label fields as `Target`) |
| `attr.label(doc, required=False, allow_files=False, providers=(), default=None)` | a label (or a file name with `allow_files`) | `Target` or `None` |
| `attr.label_list(doc, required=False, allow_files=False, providers=(), default=())` | list of labels / files, or a glob table | `tuple[Target, ...]` |
| `attr.output(doc, required=False)` | a file name | `File` below `pbuild-out/<package>/` |
| `attr.output_list(doc, required=False)` | list of file names | `tuple[File, ...]` |

`allow_files=True` accepts any file of the package, `allow_files=["py", "pyi"]` only those
extensions (also for the files of targets named there). `providers=[SomeInfo]` accepts only
targets whose rule returns a `SomeInfo`. `attr.dict(..., fields={"image": attr.label(...), ...})`
documents each entry's keys (`[target.ATTR.NAME]` tables) and analyzes its label fields as
dependencies; `ctx.fail(..., attr="ATTR.NAME.KEY")` points at the key's line.

### What a rule sees: `RuleContext`

* `ctx.label`, `ctx.package`: the target's address.
* `ctx.attr.NAME`: attribute values, typed as in the table above. A label attribute gives
  `Target` objects: `target.label`, `target.files`, `target[SomeInfo]`, `SomeInfo in target`,
  `target.get(SomeInfo)`.
* `ctx.files.NAME`: for label attributes, the files of all named targets, flattened;
  `ctx.file.NAME`: the single file of a `label` attribute (or `None`).
* `ctx.declare_file(name)`, `ctx.declare_directory(name)`: a new output
  `pbuild-out/<package>/<name>` (`File` objects have `path`, `basename`, `extension`,
  `is_source`, `is_directory`). Actions may only write outputs their target declared.
* `ctx.outputs.NAME`: the `File` (or files) of an `output` / `output_list` attribute.
* `ctx.config(section)`: a table of `WORKSPACE.toml`, read-only.
* `ctx.read_workspace_file(path)`: the text of a workspace file read at analysis time (a lock
  file); always read through it, so pbuild notices when the file changes.
  `ctx.read_package_file(name)` does the same for a file of the target's own package folder,
  also in a built-in `//@pbuild/...` package (how `py_tool` finds pbuild's tool locks).
* `ctx.fail(message, attr=None, hint=None)`: stop with an error that names the target and the
  line of the attribute.

### Declaring actions: `ctx.actions`

* `ctx.actions.run(argv=..., inputs=..., outputs=..., mnemonic=..., env=None, workdir="",
  host_tools=True, progress="", salt="")`: a process action. It runs in a sandbox (new user,
  mount, PID, network, IPC and UTS namespaces) whose exec root holds only the declared
  `inputs`, at the same workspace-relative paths; only the folders of the declared `outputs` and a
  private `/tmp` are writable; there is no network. `workdir` is relative to the exec root. The
  environment is fixed (`PATH`, `LANG=C.UTF-8`, `TZ=UTC`, `SOURCE_DATE_EPOCH`, `HOME=/tmp`,
  `PYTHONHASHSEED=0`) plus `env`. With `host_tools=True` (programs of the host such as `bash`) the
  action key includes the host fingerprint (architecture, libc, OS release, Python version).
* `ctx.actions.call(function, version=..., params=..., inputs=..., outputs=..., mnemonic=...,
  network=False)`: an in-process action. `function(io, params)` must be a module-level function;
  `io.input_path(file)` and `io.output_path(file)` give the real paths of declared files (the
  output's folder exists), `io.tmpdir` is a scratch folder, `io.label` the target and `io.jobs` the
  build's `--jobs` (for functions that can use threads). `params` must be JSON-serializable.
  The function's qualified name, `version` and `params` are part of the action key: bump
  `version` whenever the function writes something else for the same inputs and params.
  `network=True` is for fetches that check a pinned hash, and nothing else.
* `ctx.actions.write(output, content)`: an action that writes fixed text or bytes.

An action's key is an xxh3-128 digest of everything that can change its outputs (kind, version,
argv or function and params, environment, input paths and digests, output paths, the host
fingerprint for host tools); a key seen before is served from the cache. So an action must be a
pure function of its declared inputs: no clock, no host paths, no network, sorted directory
listings. Raise a `PbuildError` from an in-process action for a user's mistake; any other exception
is reported as a bug in the rule.

### Returning providers

A provider is a frozen dataclass deriving from `Provider`; the rules of the targets that depend on
yours read it with `target[YourInfo]`. The engine knows three:

* `DefaultInfo(files=(), runfiles=())`: what `pbuild build` produces for the target, and what
  running it needs. A rule that returns no `DefaultInfo` produces nothing.
* `RunInfo(argv, env={}, keep_dashdash=False)`: how `pbuild run` starts the target (`File` items of
  `argv` become absolute paths of the built files); use with `executable=True`.
* `TestInfo(argv, inputs, env={}, workdir="", timeout_s=300.0)`: how `pbuild test` runs the target,
  as one sandboxed action; use with `test=True`.

### Target generators

`target_generator(name, *, attrs, doc)` declares a rule-like table that expands, at load time, into
several targets (for example one target per project of a lock file). Its function receives a
`GeneratorContext` (`ctx.label`, `ctx.attr`, `ctx.read_file(path)`, `ctx.fail(...)`; label
attributes arrive as plain strings) and returns `GeneratedTarget(name, rule, attrs)` records, each
as if written by hand in the same `BUILD.toml`. List generators in `RULES` too.

### Registering rules: `RULES` and workspace plugins

A rule module lists its rules and generators in a module-level `RULES` list; there is no global
registry. The built-in families are `pbuild.rules.core`, `pbuild.rules.python`,
`pbuild.rules.debian` and `pbuild.rules.oci`. A workspace adds its own rule modules in
`WORKSPACE.toml`:

```toml
[workspace]
plugins = ["build_rules/stamp.py"]
```

Paths are relative to the workspace root. Of pbuild, a plugin uses only `pbuild.engine.api` (plus
`pbuild.engine.errors` and `pbuild.engine.labels`): the engine's other modules are private and change
without notice. A plugin's rule names must not clash with built-in ones. A plugin that does not
exist, fails to import, or has no `RULES` list is reported as an error that names the plugin.
Changing a plugin invalidates the analysis of every target, so new argv or params take effect at the
next build; an in-process function whose body changed needs a new `version`.

A built-in family registers its commands the same way, in a module-level `COMMANDS` list of
`Command` records (name, help, description, an argparse `configure` function, and `run`, which gets
a `CommandContext` and returns the exit code): `pbuild push`, `images`, `pull`, `rmi`, `tag`, `save`
and `load` are the `pbuild.rules.oci` family's. Workspace plugins cannot add commands yet.

### Worked example: a `stamp` rule

`build_rules/stamp.py` defines two rules: `stamp` (an in-process action, and optionally a process
action) and `release_notes`, which accepts only targets that provide `StampInfo`.

```python
@EXAMPLE_PLUGIN@```

`WORKSPACE.toml`:

```toml
@EXAMPLE_WORKSPACE@```

`BUILD.toml` (with `README.txt` and `CHANGES.txt` beside it):

```toml
@EXAMPLE_BUILD@```

```console
$ pbuild build //:notes //:changes
[1/4] FileWrite //:notes
[2/4] Stamp //:readme
[3/4] Stamp //:changes
[4/4] Checksum //:changes
4 actions: 4 executed in 0.12 s
$ cat pbuild-out/notes.md
- 1.2
- 1.3
```

`pbuild-out/readme.txt` holds `README.txt` followed by `version 1.2`; `pbuild-out/changes.txt` holds
`CHANGES.txt`, the stamped readme and `version 1.3`, and `pbuild-out/changes.sha256` its checksum.
Building `//:notes` alone runs one action: the notes need only the versions, which analysis knows. `version = "v1"` is refused with the file,
line, target and hint from `ctx.fail`; `stamps = [":some_filegroup"]` is refused because a
filegroup does not provide `StampInfo`.

"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(spec: Attr) -> str:
    kind = spec.kind
    text = f"`{kind}`"
    if spec.values:
        text += " (one of " + ", ".join(f"`{v}`" for v in spec.values) + ")"
    if spec.allow_files is True:
        text += ", files allowed"
    elif spec.allow_files:
        text += ", files: " + ", ".join(f"`.{ext}`" for ext in spec.allow_files)
    if spec.providers:
        text += ", providing " + ", ".join(f"`{p.__name__}`" for p in spec.providers)
    return text


def _default(spec: Attr) -> str:
    if spec.required:
        return ""
    value: Any = spec.default
    if value is None or value == () or value == {}:
        if spec.kind == "bool":
            return "`false`"
        return ""
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value, sort_keys=True).replace("|", "\\|") + "`"


def _attr_table(attrs: Iterable[tuple[str, Attr]]) -> list[str]:
    lines = ["| attribute | type | default | required | description |", "| --- | --- | --- | --- | --- |"]
    for name, spec in attrs:
        required = "yes" if spec.required else ""
        lines.append(f"| `{name}` | {_type(spec)} | {_default(spec)} | {required} | {_cell(spec.doc)} |")
        for field_name, field_spec in spec.fields:  # a table of tables: each entry's keys
            required = "yes" if field_spec.required else ""
            lines.append(f"| `{name}.<NAME>.{field_name}` | {_type(field_spec)} | {_default(field_spec)} "
                         f"| {required} | {_cell(field_spec.doc)} |")
    return lines


def _family_rules(module_name: str) -> Sequence[RuleDef | GeneratorDef]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return ()  # a family that is not part of this installation
        raise
    return tuple(getattr(module, "RULES", ()))


def _rule_section(definition: RuleDef | GeneratorDef) -> list[str]:
    lines = [f"### `{definition.name}`", ""]
    kinds = []
    if isinstance(definition, GeneratorDef):
        kinds.append("target generator: expands into several targets when its package loads")
    elif definition.executable:
        kinds.append("executable: `pbuild run` starts it")
    if isinstance(definition, RuleDef) and definition.test:
        kinds.append("test: `pbuild test` runs it")
    lines.append(" ".join(definition.doc.split()))
    if kinds:
        lines += ["", "*" + "; ".join(kinds) + ".*"]
    lines.append("")
    schema = rule_schema(definition) if isinstance(definition, RuleDef) else definition.attrs
    if schema:
        lines += _attr_table(sorted(schema.items()))
    else:
        lines.append("No attributes besides `rule`, `tags` and `visibility`.")
    lines.append("")
    return lines


def render() -> str:
    """The whole of docs/rules.md."""
    guide = (
        GUIDE.replace("@EXAMPLE_PLUGIN@", EXAMPLE_PLUGIN)
        .replace("@EXAMPLE_WORKSPACE@", EXAMPLE_WORKSPACE)
        .replace("@EXAMPLE_BUILD@", EXAMPLE_BUILD)
    )
    out = [guide.rstrip("\n"), ""]
    out += [
        "## Rule reference",
        "",
        "Generated from the rule schemas; the type column uses the names of `attr.*` (`label_list` is "
        "a list of labels or files, `output_list` a list of output file names).",
        "",
    ]
    for module_name in BUILTIN_FAMILIES:
        rules = _family_rules(module_name)
        if not rules:
            continue
        out += [f"## `{module_name}`", ""]
        for definition in rules:
            out += _rule_section(definition)
    out += ["## Attributes of every rule", ""]
    out += _attr_table(sorted(COMMON_ATTRS.items()))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
