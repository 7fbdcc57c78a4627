"""The launcher's one error type (it does not import the engine, so not ``PbuildError``)."""

from __future__ import annotations

from pbuild.lib.errors import UserError

EXIT_FAILED = 1
"""Docker's code for a ps/logs/exec/stop/rm that could not do its job (no such container)."""
EXIT_LAUNCHER = 125
"""Docker's code for an error of the runtime itself (bad flag, bad image, setup failure)."""
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class LauncherError(UserError):
    """A user-facing launcher failure: ``what`` went wrong and ``hint`` how to fix it."""

    exit_code = EXIT_LAUNCHER

    def render(self) -> str:
        return "pbuild: " + super().render()


class RefusedLayer(LauncherError):
    """A layer the launcher will not unpack: hostile or damaged (escaping path, wrong digest,
    unsupported entry)."""


class NoSuchContainer(LauncherError):
    """No container has this name or id (exit 1, as ``docker rm NAME`` does)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no such container: {name}", hint="`pbuild ps -a` lists the containers", exit_code=EXIT_FAILED
        )
