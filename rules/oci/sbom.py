"""The SPDX 2.3 software bill of materials of one platform's image, made from its layers' ``contents``.

The layer actions record what they put into a layer (packages with their licenses, first-party
files with their checksums) in the layer's sidecar JSON; this module turns those records into one
SPDX JSON document. No layer is read again, and the document is a pure function of its
arguments: every list is sorted, ``created`` is the build epoch, and the bytes are canonical JSON.

Hand-written rather than built with ``spdx-tools``' model and writer: that library is a test
dependency only (it validates what this module writes), and the JSON form of the few SPDX
elements written here is a small, stable part of the specification.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
from packaging.utils import canonicalize_name
from pbuild.lib import determinism

SPDX_MEDIA_TYPE = "application/spdx+json"
SPDX_VERSION = "SPDX-2.3"
NOASSERTION = "NOASSERTION"
#: The URI prefix of pbuild's document namespaces. SPDX asks for a unique absolute URI, which
#: need not resolve; the image digest makes it unique, and the prefix names no registry.
NAMESPACE_PREFIX = "https://spdx.org/spdxdocs/pbuild"

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_LICENSE_REF = re.compile(r"\bLicenseRef-[A-Za-z0-9.-]+")
_WHERE = {"deb": "the Debian package's copyright file", "wheel": "the wheel's METADATA"}


@dataclass(frozen=True, order=True)
class PackageRecord:
    """One package of a layer's ``contents`` (a Debian package or a wheel), as the SBOM lists it."""

    type: str
    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    license: str | None
    source: str | None
    homepage: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PackageRecord:
        """A record from the sidecar's JSON object (unknown keys ignored, optional ones may be absent)."""
        return cls(type=str(data["type"]), name=str(data["name"]), version=str(data["version"]),
                   architecture=str(data.get("architecture") or ""), filename=str(data.get("filename") or ""),
                   sha256=str(data.get("sha256") or ""), license=data.get("license") or None,
                   source=data.get("source") or None, homepage=data.get("homepage") or None)

    @property
    def purl(self) -> str:
        """The package URL (purl spec: the version is percent-encoded, ``+`` and an epoch's ``:`` included)."""
        version = quote(self.version, safe="")
        if self.type == "deb":
            arch = f"?arch={quote(self.architecture, safe='')}" if self.architecture else ""
            return f"pkg:deb/debian/{quote(self.name, safe='')}@{version}{arch}"
        return f"pkg:pypi/{canonicalize_name(self.name)}@{version}"


@dataclass(frozen=True, order=True)
class FileRecord:
    """One first-party file of a layer's ``contents``: its in-image path and checksums."""

    path: str
    sha1: str
    sha256: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileRecord:
        return cls(path=str(data["path"]).strip("/"), sha1=str(data["sha1"]), sha256=str(data["sha256"]))


def spdx_document(*, image_name: str, image_digest: str, platform: str,
                  contents: Sequence[Mapping[str, Any]], epoch: int, tool_version: str) -> bytes:
    """One SPDX 2.3 JSON document (canonical bytes) for one platform's image.

    image_name: the first tag or the label; image_digest: that platform's manifest digest
    (``sha256:<hex>``); contents: the "contents" objects of the image's layer sidecars, bottom to
    top (missing ones skipped).
    """
    algorithm, _, hex_digest = image_digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        raise ValueError(f"image digest {image_digest!r} is not sha256:<64 hex digits>")
    packages, files = collect(contents)
    ids = _IdAllocator()
    image_id = ids.take("Image-" + image_name)
    refs: dict[str, set[tuple[str, str]]] = {}
    package_elements = [_package_element(p, ids.take(f"Package-{p.type}-{p.name}-{p.version}-{p.architecture}"),
                                         refs) for p in packages]
    file_elements = [_file_element(f, ids.take("File-" + f.path)) for f in files]
    image = {
        "SPDXID": image_id,
        "name": image_name,
        "versionInfo": image_digest,
        "downloadLocation": NOASSERTION,
        # SPDX lets only a package whose files were analyzed CONTAIN files: the image lists its
        # first-party ones. No packageVerificationCode: it would claim to cover every file.
        "filesAnalyzed": bool(file_elements),
        "checksums": [{"algorithm": "SHA256", "checksumValue": hex_digest}],
        "primaryPackagePurpose": "CONTAINER",
        "supplier": NOASSERTION,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "externalRefs": [_purl(_oci_purl(image_name, hex_digest, platform))],
        "comment": f"The image manifest {image_digest} for {platform}.",
    }
    relationships = [_relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id)]
    relationships += [_relationship(image_id, "CONTAINS", e["SPDXID"]) for e in (*package_elements, *file_elements)]
    document: dict[str, Any] = {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image_name} ({platform})",
        "documentNamespace": namespace(image_name, image_digest),
        "creationInfo": {"created": determinism.rfc3339(epoch), "creators": [f"Tool: pbuild-{tool_version}"]},
        "documentDescribes": [image_id],
        "packages": sorted([image, *package_elements], key=lambda e: str(e["SPDXID"])),
        "files": sorted(file_elements, key=lambda e: str(e["SPDXID"])),
        "relationships": sorted(relationships, key=lambda r: (r["spdxElementId"], r["relationshipType"],
                                                              r["relatedSpdxElement"])),
    }
    if refs:
        document["hasExtractedLicensingInfos"] = [_extracted(ref, used) for ref, used in sorted(refs.items())]
    return determinism.canonical_json(document)


def tool_version() -> str:
    """pbuild's version, for ``creators`` (:mod:`pbuild.lib.version`, the one the CLI prints)."""
    from pbuild.lib.version import VERSION

    return VERSION


def collect(contents: Iterable[Mapping[str, Any] | None]) -> tuple[list[PackageRecord], list[FileRecord]]:
    """The packages and files of the layers' contents, bottom to top, sorted and without repeats.

    A package in two layers is listed once. A file path in two layers is the upper layer's file
    (an upper layer's file replaces a lower one's in the image).
    """
    packages: set[PackageRecord] = set()
    files: dict[str, FileRecord] = {}
    for content in contents:
        if not content:
            continue
        packages.update(PackageRecord.from_json(p) for p in content.get("packages", ()))
        for item in content.get("files", ()):
            record = FileRecord.from_json(item)
            files[record.path] = record
    return sorted(packages), [files[path] for path in sorted(files)]


def namespace(image_name: str, image_digest: str) -> str:
    """The document namespace: the manifest digest and a short hash of the image name below pbuild's prefix.

    The name is hashed, not written, because it usually starts with a registry host (``app:1``
    and ``registry.example/app:1`` of one manifest still get two namespaces).
    """
    name = hashlib.sha256(image_name.encode("utf-8")).hexdigest()[:16]
    return f"{NAMESPACE_PREFIX}/{image_digest.replace(':', '-')}-{name}"


def license_expression(text: str | None) -> str | None:
    """``text`` as a canonical SPDX license expression, or None when it is not one."""
    if not text or not text.strip():
        return None
    try:
        return str(canonicalize_license_expression(text.strip()))
    except InvalidLicenseExpression:
        return None


class _IdAllocator:
    """SPDX element ids (``SPDXRef-`` + ``[A-Za-z0-9.-]``), unique in one document.

    Sanitizing can map two names onto one id (``a+b`` and ``a.b`` both keep their letters); the
    later one (the inputs come sorted, so the same one every time) gets a numeric suffix.
    """

    def __init__(self) -> None:
        self.taken: set[str] = {"SPDXRef-DOCUMENT"}

    def take(self, hint: str) -> str:
        base = "SPDXRef-" + (_ID_UNSAFE.sub("-", hint).strip("-") or "element")
        candidate, n = base, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{base}-{n}"
        self.taken.add(candidate)
        return candidate


def _package_element(record: PackageRecord, spdx_id: str, refs: dict[str, set[tuple[str, str]]]) -> dict[str, Any]:
    element: dict[str, Any] = {
        "SPDXID": spdx_id,
        "name": record.name,
        "versionInfo": record.version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "supplier": "Organization: Debian" if record.type == "deb" else NOASSERTION,
        "copyrightText": NOASSERTION,
        "externalRefs": [_purl(record.purl)],
    }
    if record.filename:
        element["packageFileName"] = record.filename
    if record.sha256:
        element["checksums"] = [{"algorithm": "SHA256", "checksumValue": record.sha256}]
    expression = license_expression(record.license)
    element["licenseDeclared"] = element["licenseConcluded"] = expression or NOASSERTION
    if expression:
        for ref in sorted(set(_LICENSE_REF.findall(expression))):
            refs.setdefault(ref, set()).add((record.type, record.name))
    elif record.license:
        # Not an SPDX expression: say what was found rather than drop it or emit an invalid document.
        element["licenseComments"] = f"{_WHERE.get(record.type, 'the metadata')} names {record.license!r}, " \
                                     "which is not an SPDX license expression"
    if record.homepage:
        element["homepage"] = record.homepage
    if record.source and record.type == "deb":
        element["sourceInfo"] = f"built from the Debian source package {record.source}"
    return element


def _file_element(record: FileRecord, spdx_id: str) -> dict[str, Any]:
    return {
        "SPDXID": spdx_id,
        "fileName": "./" + record.path,  # SPDX file names are relative paths starting with ./
        "checksums": [{"algorithm": "SHA1", "checksumValue": record.sha1},
                      {"algorithm": "SHA256", "checksumValue": record.sha256}],
        "licenseConcluded": NOASSERTION,
        "copyrightText": NOASSERTION,
    }


def _extracted(ref: str, used_by: set[tuple[str, str]]) -> dict[str, Any]:
    name = ref[len("LicenseRef-"):]
    where = "; ".join(f"{_WHERE.get(kind, 'the metadata')} of {package}" for kind, package in sorted(used_by))
    return {
        "licenseId": ref,
        "name": name,
        "extractedText": f"A license named {name} (no SPDX license identifier), as found in {where}. "
                         "The license text itself is in the package.",
    }


def _purl(locator: str) -> dict[str, str]:
    return {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator}


def _oci_purl(image_name: str, hex_digest: str, platform: str) -> str:
    """``pkg:oci/<last path segment of the repository>@sha256%3A<hex>?arch=...`` (purl's oci type)."""
    repository = image_name.rsplit("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        last = last.split(":", 1)[0]
    name = quote(last.lower() or "image", safe="")
    arch = platform.split("/", 1)[-1]
    return f"pkg:oci/{name}@sha256%3A{hex_digest}?arch={quote(arch, safe='')}"


def _relationship(element: str, kind: str, related: str) -> dict[str, str]:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}
