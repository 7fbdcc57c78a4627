"""Stacks: the ``stack`` rule (several services from image targets, in Compose's words).

``RULES`` is loaded on first access (PEP 562), as the image family's is: the rule set imports
this package to look up rule names, and a build of other targets must not pay for the stack
parser. The ``up``/``down``/``ps``/``logs`` commands (``COMMANDS``) live in ``commands.py``.
"""

from typing import Any

__all__ = ["COMMANDS", "RULES"]


def __getattr__(name: str) -> Any:
    if name == "RULES":
        from pbuild.rules.stack.rules import RULES

        return RULES
    if name == "COMMANDS":
        from pbuild.rules.stack.commands import COMMANDS

        return COMMANDS
    raise AttributeError(name)
