"""The root of every error pbuild shows a user, shared by the engine and the launcher.

The engine's ``PbuildError`` adds a location and a label; the launcher's ``LauncherError`` uses
Docker's exit codes. Libraries in ``pbuild.lib`` raise ``UserError`` subclasses so that both
front ends report them without knowing each other.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A failure caused by input, configuration or the environment, not a bug in pbuild.

    ``message`` says what went wrong, ``hint`` how to fix it; ``exit_code`` is what the command
    exits with (a class default that an instance may override).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
