"""The root of every error pbuild shows a user, shared by the engine and the launcher.

The engine's ``PbuildError`` adds a location and a label; the launcher's ``LauncherError`` uses
Docker's exit codes. Libraries in ``pbuild.lib`` raise ``UserError`` subclasses so that both
front ends report them without knowing each other.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class Location:
    """A place in a user's file: ``path:line[:column]``.

    A plain class rather than a dataclass: this module is on the engine's no-op fast path, and
    importing dataclasses costs more than the whole up-to-date check.
    """

    __slots__ = ("path", "line", "column")

    def __init__(self, path: str, line: int | None = None, column: int | None = None) -> None:
        self.path = path
        self.line = line
        self.column = column

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.path, self.line, self.column) == (other.path, other.line, other.column)

    def __hash__(self) -> int:
        return hash((self.path, self.line, self.column))

    def __repr__(self) -> str:
        return f"Location({self.path!r}, {self.line!r}, {self.column!r})"

    def __str__(self) -> str:
        text = self.path
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text


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
