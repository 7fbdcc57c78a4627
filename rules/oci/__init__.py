"""Images: the ``layer`` and ``image`` rules (and the writers they share with ``deb_packages``)."""

from pbuild.rules.oci.rules import _image, _layer

RULES = [_layer, _image]

__all__ = ["RULES"]
