"""The architectures pbuild builds and runs images for, and this machine's: the one table of names.

Its own module, with no imports beyond ``os``: the launcher asks for the host's platform on every
``pbuild run`` (its option help names it), and :mod:`pbuild.lib.platforms` costs a ``dataclasses``
import that a program's ``pbuild run`` should not pay.
"""

from __future__ import annotations

import os

#: OCI architecture -> (Debian architecture, the machine name wheels and ``uname -m`` use).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "amd64": ("amd64", "x86_64"),
    "arm64": ("arm64", "aarch64"),
}
MACHINES: dict[str, str] = {
    **{machine: arch for arch, (_, machine) in ARCHITECTURES.items()},
    # Machines pbuild builds nothing for, named for `pbuild pull` (which picks the host's image).
    "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "i686": "386",
}
"""``uname -m`` -> OCI architecture."""


def host_architecture() -> str:
    """This machine's OCI architecture (``amd64``); a machine not in the table keeps its ``uname -m`` name."""
    machine = os.uname().machine
    return MACHINES.get(machine, machine)
