"""The platform this machine runs images of (its own module: ``pbuild run``'s option parser
needs it without loading the launcher's records)."""

from __future__ import annotations

import os


def host_platform() -> str:
    """This machine's platform as OCI names it (``linux/amd64``, ``linux/arm64``)."""
    machine = os.uname().machine
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
