"""The Python rule family: locked third-party wheels, py_library, py_binary, py_test.

``RULES`` is what the engine registers; ``lock_python`` is ``pbuild lock --python``.
"""

from __future__ import annotations

from pbuild.rules.python.binary import py_binary, py_test
from pbuild.rules.python.library import py_library
from pbuild.rules.python.requirements import py_requirements, py_wheel

RULES = [py_requirements, py_wheel, py_library, py_binary, py_test]


def lock_python(workspace_root: str) -> None:
    """``pbuild lock --python``: see :func:`pbuild.rules.python.lock.lock_python`."""
    # Imported on use: the resolver's imports (packaging, urllib) would slow every other command.
    from pbuild.rules.python.lock import lock_python as lock

    lock(workspace_root)

__all__ = ["RULES", "lock_python"]
