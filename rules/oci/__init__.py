"""Images: the ``layer`` and ``image`` rules (and the writers they share with ``deb_packages``).

``RULES`` is loaded on first access (PEP 562): importing ``pbuild.rules.oci.providers`` (the
engine does, to recognize images) must not pay for the image writers' imports.
"""

from typing import Any

__all__ = ["RULES"]


def __getattr__(name: str) -> Any:
    if name == "RULES":
        from pbuild.rules.oci.pull import _oci_pull
        from pbuild.rules.oci.rules import _image, _layer

        return [_layer, _image, _oci_pull]
    raise AttributeError(name)
