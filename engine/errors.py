"""The one root of every error pbuild reports to a user.

Each error carries *where* (file:line and/or a label), *what* was expected and *how to fix it*;
the CLI turns them into a message and an exit code in one place (``cli.main``). Anything that
is not a ``PbuildError`` is a bug in pbuild and is allowed to show a traceback.
"""

from __future__ import annotations

from pbuild.lib.errors import EXIT_BAD_INPUT as EXIT_BAD_INPUT  # re-exported: the CLI's exit codes live here
from pbuild.lib.errors import Location as Location  # re-exported: rules and the engine place errors with it
from pbuild.lib.errors import UserError

EXIT_BUILD_FAILED = 1


class PbuildError(UserError):
    """Base of all user-facing errors.

    ``where`` is a location and/or a label, ``hint`` says how to fix it. ``exit_code`` is 2 for
    bad input or configuration and 1 for a build or test that ran and failed.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        label: object | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.location = location
        self.label = label

    @classmethod
    def of(cls, error: UserError, *, label: object | None = None, location: Location | None = None) -> PbuildError:
        """``error`` (from a shared library) said with where it struck; its exit code is kept."""
        wrapped = cls(error.message, hint=error.hint, label=label, location=location)
        wrapped.exit_code = error.exit_code
        return wrapped

    def render(self) -> str:
        where = []
        if self.location is not None:
            where.append(str(self.location))
        if self.label is not None:
            where.append(f"target {self.label}")
        head = f"{': '.join(where)}: " if where else ""
        text = f"error: {head}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class WorkspaceError(PbuildError):
    """No workspace, or a bad WORKSPACE.toml."""


class LoadError(PbuildError):
    """A BUILD.toml cannot be read: bad TOML, unknown rule, bad attribute, missing label."""


class AnalysisError(PbuildError):
    """A rule refused its attributes, a cycle, or two targets claiming one output."""


class BuildFailed(PbuildError):
    """An action ran and failed (non-zero exit, missing output)."""

    exit_code = EXIT_BUILD_FAILED


class HashMismatch(PbuildError):
    """A fetched or stored file does not have the digest that pins it."""


class OutOfSpace(PbuildError):
    """A write failed: the filesystem is full or the disk quota is used up (see ``oserrors``).

    The inputs were fine, but the build could not finish: exit 1, as for a failed build.
    """

    exit_code = EXIT_BUILD_FAILED
