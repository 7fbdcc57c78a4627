"""The stack's error type: a launcher error (Docker's exit codes), with the service it is about."""

from __future__ import annotations

from pbuild.tools.launcher.errors import LauncherError


class StackError(LauncherError):
    """A stack that cannot be brought up or down: ``message`` names the service; ``hint`` how to fix it."""
