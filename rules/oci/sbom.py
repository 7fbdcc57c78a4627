"""A minimal SPDX 2.3 writer for an image's bill of materials (a stand-in with the brief's interface).

The sbom helper's module of the same name replaces this one at merge; it exists so that the image
rule's ``write_image`` can call :func:`spdx_document` already. It writes one SPDX 2.3 JSON
document per platform image from the ``contents`` objects of the layers' sidecars: the image as
the described package, one package per Debian package and wheel, one file per first-party file,
and a CONTAINS relationship from the image to each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pbuild.lib import determinism

SPDX_MEDIA_TYPE = "application/spdx+json"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def _spdx_id(kind: str, *parts: str) -> str:
    return "SPDXRef-" + _ID_UNSAFE.sub("-", "-".join((kind, *(p for p in parts if p))))


def spdx_document(*, image_name: str, image_digest: str, platform: str,
                  contents: Sequence[Mapping[str, Any]], epoch: int, tool_version: str) -> bytes:
    """One SPDX 2.3 JSON document (canonical bytes) for one platform's image.

    image_name: the first tag or the label; image_digest: that platform's manifest digest;
    contents: the "contents" objects of the image's layer sidecars, bottom to top (missing ones skipped).
    """
    image_id = "SPDXRef-image"
    packages: list[dict[str, Any]] = [{
        "SPDXID": image_id, "name": image_name, "versionInfo": image_digest,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": image_digest.partition(":")[2]}],
    }]
    files: list[dict[str, Any]] = []
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    seen: set[str] = set()
    for layer in contents:
        for package in layer.get("packages") or []:
            spdx_id = _spdx_id(package["type"], package["name"], package.get("version", ""),
                               package.get("architecture", ""))
            if spdx_id in seen:
                continue
            seen.add(spdx_id)
            license_text = package.get("license") or "NOASSERTION"
            packages.append({
                "SPDXID": spdx_id, "name": package["name"], "versionInfo": package.get("version", ""),
                "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "packageFileName": package["filename"],
                "checksums": [{"algorithm": "SHA256", "checksumValue": package["sha256"]}],
                "licenseConcluded": "NOASSERTION", "licenseDeclared": license_text,
                "copyrightText": "NOASSERTION",
            })
            relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                                  "relatedSpdxElement": spdx_id})
        for file in layer.get("files") or []:
            spdx_id = _spdx_id("File", file["path"])
            if spdx_id in seen:
                continue
            seen.add(spdx_id)
            files.append({"SPDXID": spdx_id, "fileName": "./" + file["path"].lstrip("/"),
                          "checksums": [{"algorithm": "SHA1", "checksumValue": file["sha1"]},
                                        {"algorithm": "SHA256", "checksumValue": file["sha256"]}],
                          "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION"})
            relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                                  "relatedSpdxElement": spdx_id})
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image_name} {platform}",
        # The namespace must be unique per document: the image digest makes it so, without a host name.
        "documentNamespace": f"https://spdx.org/spdxdocs/pbuild/{image_digest.replace(':', '-')}",
        "creationInfo": {"created": determinism.rfc3339(epoch), "creators": [f"Tool: pbuild-{tool_version}"]},
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }
    return determinism.canonical_json(document)
