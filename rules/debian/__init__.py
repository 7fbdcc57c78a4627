"""Debian packages: the lock (``pbuild lock --debian``) and the ``deb_packages`` rule."""

from pbuild.rules.debian.lock import lock_debian
from pbuild.rules.debian.rules import _deb_packages

RULES = [_deb_packages]

__all__ = ["RULES", "lock_debian"]
