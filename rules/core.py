"""Core rules: ``filegroup`` and ``genrule``."""

from __future__ import annotations

import re
import shlex

from pbuild.engine.api import DefaultInfo, File, Provider, RuleContext, Target, attr, rule


@rule(
    "filegroup",
    doc="Names a set of files (sources or other targets' outputs) so other targets can use them together.",
    attrs={
        "srcs": attr.label_list("Files and targets whose files form the group.", allow_files=True),
    },
)
def filegroup(ctx: RuleContext) -> list[Provider]:
    return [DefaultInfo(files=tuple(dict.fromkeys(ctx.files.srcs)))]


_VAR = re.compile(r"\$\((SRCS|OUTS|location [^)]+|locations [^)]+)\)|\$[@<]|\$\$")


def _expand(ctx: RuleContext, cmd: str, srcs: tuple[File, ...], outs: tuple[File, ...],
            located: dict[str, tuple[File, ...]]) -> str:
    """Expand $(SRCS), $(OUTS), $@, $<, $(location LABEL) with paths relative to the package folder."""
    base = ctx.package
    up = "../" * (base.count("/") + 1) if base else ""
    inside = base + "/"

    def rel(f: File) -> str:
        # Paths relative to the package folder (cheaper than os.path.relpath, which matters for
        # workspaces with thousands of genrules), quoted for bash (ordinary names stay as they are).
        if not base:
            return shlex.quote(f.path)
        return shlex.quote(f.path[len(inside):] if f.path.startswith(inside) else up + f.path)

    def sub(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        if token == "$@":
            if len(outs) != 1:
                ctx.fail(f"$@ needs exactly one output, there are {len(outs)}", attr="cmd", hint="use $(OUTS)")
            return rel(outs[0])
        if token == "$<":
            if len(srcs) != 1:
                ctx.fail(f"$< needs exactly one input, there are {len(srcs)}", attr="cmd", hint="use $(SRCS)")
            return rel(srcs[0])
        name = match.group(1)
        if name == "SRCS":
            return " ".join(rel(f) for f in srcs)
        if name == "OUTS":
            return " ".join(rel(f) for f in outs)
        word, label = name.split(" ", 1)
        files = located.get(label.strip())
        if files is None:
            ctx.fail(f"$({name}): {label.strip()} is not in srcs or tools", attr="cmd",
                     hint="list the label in srcs or tools")
        if word == "location" and len(files) != 1:
            ctx.fail(f"$(location {label.strip()}) names {len(files)} files", attr="cmd",
                     hint="use $(locations ...) for several files")
        return " ".join(rel(f) for f in files)

    return _VAR.sub(sub, cmd)


@rule(
    "genrule",
    toolchain="shell",
    doc="Runs a shell command (bash) in the package's folder inside the sandbox to produce `outs`, on "
        "the `shell` toolchain (bash, coreutils and the tools its Debian packages hold) or the host.",
    attrs={
        "srcs": attr.label_list("Inputs the command reads.", allow_files=True),
        "outs": attr.output_list("Files the command writes, relative to the package's output folder.", required=True),
        "cmd": attr.string(
            "Bash command. $(SRCS), $(OUTS), $@ (the one output), $< (the one input), "
            "$(location LABEL) and $(locations LABEL) expand to paths relative to the package folder; $$ is a $.",
            required=True,
        ),
        "tools": attr.label_list("Programs or files the command runs (inputs that are not sources).", allow_files=True),
        "env": attr.string_dict("Extra environment variables for the command."),
        "message": attr.string("Progress message shown while the command runs."),
    },
)
def genrule(ctx: RuleContext) -> list[Provider]:
    srcs = tuple(dict.fromkeys(ctx.files.srcs))
    tools = tuple(dict.fromkeys(ctx.files.tools))
    outs = tuple(ctx.attr.outs)
    if not outs:
        ctx.fail("genrule needs at least one output", attr="outs")
    located: dict[str, tuple[File, ...]] = {}
    raw_srcs = ctx.attr.srcs + ctx.attr.tools
    for target in raw_srcs:
        assert isinstance(target, Target)
        label = target.label
        files = target.files
        located[str(label)] = files
        if label.package == ctx.package:
            located[f":{label.name}"] = files
            located[label.name] = files
    cmd = _expand(ctx, ctx.attr.cmd, srcs, outs, located)
    ctx.actions.run(
        argv=("/bin/bash", "-c", cmd),
        inputs=srcs + tools,
        outputs=outs,
        mnemonic="Genrule",
        env=ctx.attr.env,
        workdir=ctx.package,
        progress=ctx.attr.message or f"Genrule {ctx.label}",
    )
    return [DefaultInfo(files=outs)]


RULES = [filegroup, genrule]
