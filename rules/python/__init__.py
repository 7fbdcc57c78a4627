"""The Python rule family: locked third-party wheels, py_library, py_binary, py_test.

``RULES`` is what the engine registers; ``lock_python`` is ``pbuild lock --python`` and
``lock_tools`` is ``pbuild lock --tools``. Both load on
first access (PEP 562), so importing ``pbuild.rules.python.providers`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RULES", "lock_python", "lock_tools"]


def __getattr__(name: str) -> Any:
    if name == "RULES":
        from pbuild.rules.python.binary import py_binary, py_test
        from pbuild.rules.python.library import py_library
        from pbuild.rules.python.requirements import py_requirements, py_wheel
        from pbuild.rules.python.tools import py_tool

        return [py_requirements, py_wheel, py_tool, py_library, py_binary, py_test]
    raise AttributeError(name)


def lock_python(workspace_root: str) -> None:
    """``pbuild lock --python``: see :func:`pbuild.rules.python.lock.lock_python`."""
    # Imported on use: the resolver's imports (packaging, urllib) would slow every other command.
    from pbuild.rules.python.lock import lock_python as lock

    lock(workspace_root)


def lock_tools(workspace_root: str) -> None:
    """``pbuild lock --tools``: see :func:`pbuild.rules.python.tools.lock_tools`."""
    from pbuild.rules.python.tools import lock_tools as lock

    lock(workspace_root)
