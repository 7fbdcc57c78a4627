"""Images: the ``layer`` and ``image`` rules (and the writers they share with ``deb_packages``),
and the ``pbuild push`` and ``pbuild images`` commands.

``RULES`` and ``COMMANDS`` are loaded on first access (PEP 562): importing
``pbuild.rules.oci.providers`` (the engine does, to recognize images) must not pay for the image
writers' imports.
"""

from typing import Any

__all__ = ["COMMANDS", "RULES"]


def __getattr__(name: str) -> Any:
    if name == "RULES":
        from pbuild.rules.oci.pull import _oci_pull
        from pbuild.rules.oci.rules import _image, _layer

        return [_layer, _image, _oci_pull]
    if name == "COMMANDS":
        from pbuild.rules.oci.commands import COMMANDS

        return COMMANDS
    raise AttributeError(name)
