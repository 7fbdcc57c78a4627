"""The OCI and Docker media types pbuild reads and writes, and the annotation naming a tag."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

#: The empty config of an artifact manifest (OCI 1.1) and its two-byte blob ``{}``.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
#: An SPDX 2.3 JSON document: an SBOM's media type and its artifact manifest's ``artifactType``.
SPDX_JSON = "application/spdx+json"

#: Documents that describe one image (config and layers).
MANIFEST_TYPES = frozenset((OCI_MANIFEST, DOCKER_MANIFEST))
#: Documents that list manifests (one per platform).
INDEX_TYPES = frozenset((OCI_INDEX, DOCKER_LIST))
#: What a registry client accepts for a manifest GET, in order of preference.
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

#: The index.json annotation that names an image in a layout (its tag).
REF_NAME = "org.opencontainers.image.ref.name"

#: The contents of a layout's ``oci-layout`` marker file.
LAYOUT_VERSION = "1.0.0"
