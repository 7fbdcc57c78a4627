"""Debian packages: the lock (``pbuild lock --debian``) and the ``deb_packages`` rule.

``RULES`` and ``lock_debian`` are loaded on first access (PEP 562), so importing a submodule
stays cheap.
"""

from typing import Any

__all__ = ["RULES", "lock_debian"]


def __getattr__(name: str) -> Any:
    if name == "RULES":
        from pbuild.rules.debian.rules import _deb_packages

        return [_deb_packages]
    if name == "lock_debian":
        from pbuild.rules.debian.lock import lock_debian

        return lock_debian
    raise AttributeError(name)
