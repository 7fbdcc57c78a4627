"""The ``[platforms]`` table of WORKSPACE.toml as the rule families read it (see :mod:`pbuild.lib.platforms`)."""

from __future__ import annotations

from pbuild.engine.api import RuleContext
from pbuild.lib.platforms import PlatformError, WorkspacePlatforms, read_platforms


def workspace_platforms(ctx: RuleContext) -> WorkspacePlatforms:
    """The workspace's platforms; a malformed table fails the target's analysis (exit 2)."""
    try:
        return read_platforms({"platforms": ctx.config("platforms")})
    except PlatformError as exc:
        ctx.fail(f"WORKSPACE.toml: {exc.message}", hint=exc.hint)
