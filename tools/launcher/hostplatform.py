"""The platform this machine runs images of natively (its own module: ``pbuild run``'s option
parser needs it without loading the launcher's records). The names come from
:mod:`pbuild.lib.architectures`, the table :mod:`pbuild.lib.platforms` uses too; this module does
not import that one (its ``dataclasses`` import would be paid by every ``pbuild run``)."""

from __future__ import annotations

from pbuild.lib.architectures import host_architecture


def host_platform() -> str:
    """This machine's platform as OCI names it (``linux/amd64``, ``linux/arm64``): ``str()`` of
    :func:`pbuild.lib.platforms.host_platform`."""
    return f"linux/{host_architecture()}"
