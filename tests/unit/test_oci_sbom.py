"""The SPDX writer (rules/oci/sbom.py): every document is parsed and validated by spdx-tools, the
reference implementation of SPDX 2.3, and must give zero validation messages."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from pbuild.rules.oci.sbom import SPDX_MEDIA_TYPE, spdx_document
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

DIGEST = "sha256:" + hashlib.sha256(b"manifest").hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deb(name: str, version: str, arch: str, license_: str | None, **extra: str) -> dict[str, Any]:
    return {"type": "deb", "name": name, "version": version, "architecture": arch,
            "filename": f"{name}_{version.split(':')[-1]}_{arch}.deb", "sha256": sha(f"{name}{arch}".encode()),
            "license": license_, **extra}


def wheel(name: str, version: str, license_: str | None, **extra: str) -> dict[str, Any]:
    return {"type": "wheel", "name": name, "version": version, "filename": f"{name}-{version}-py3-none-any.whl",
            "sha256": sha(name.encode()), "license": license_, **extra}


def program_file(path: str = "app/app/program.py", data: bytes = b"print(18)\n") -> dict[str, str]:
    return {"path": path, "sha1": hashlib.sha1(data).hexdigest(), "sha256": sha(data)}


CONTENTS: list[dict[str, Any]] = [
    {"packages": [
        deb("libc6", "2.36-9+deb12u13", "amd64", "GPL-2.0-or-later AND LGPL-2.1-or-later", source="glibc",
            homepage="https://www.gnu.org/software/libc/libc.html"),
        deb("libc6", "2.36-9+deb12u13", "arm64", "GPL-2.0-or-later AND LGPL-2.1-or-later", source="glibc"),
        deb("tzdata", "2025b-0+deb12u2", "all", "LicenseRef-public-domain"),
        deb("libgcc-s1", "12.2.0-14+deb12u1", "amd64", "GPL-3.0-or-later WITH GCC-exception-3.1"),
        deb("mawk", "1:1.3.4.20200120-3.1", "amd64", None),
    ]},
    {"packages": [wheel("numpy", "2.4.6", "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0",
                        homepage="https://numpy.org"),
                  wheel("protobuf", "7.36.2", None)]},
    {"packages": [wheel("Typing_Extensions", "4.16.0", "PSF-2.0")]},
    {"files": [program_file(), program_file("app/app/__init__.py", b"")]},
]


def write(tmp_path: Path, contents: list[dict[str, Any]], **overrides: Any) -> tuple[dict[str, Any], bytes]:
    """The document as JSON and bytes, after checking spdx-tools reads it without one message."""
    args: dict[str, Any] = {"image_name": "pbuild.local/app:latest", "image_digest": DIGEST,
                            "platform": "linux/amd64", "contents": contents, "epoch": 0, "tool_version": "0.1.0",
                            **overrides}
    data = spdx_document(**args)
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(data)
    messages = validate_full_spdx_document(parse_file(str(path)))
    assert messages == [], "\n".join(m.validation_message for m in messages)
    return json.loads(data), data


def by_name(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for package in document["packages"]:
        arch = next((r["referenceLocator"].rsplit("arch=", 1)[-1] for r in package.get("externalRefs", ())
                     if "arch=" in r["referenceLocator"]), "")
        found[(package["name"], arch)] = package
    return found


def test_media_type() -> None:
    assert SPDX_MEDIA_TYPE == "application/spdx+json"


def test_document_lists_image_packages_and_files(tmp_path: Path) -> None:
    document, data = write(tmp_path, CONTENTS, epoch=1700000000)
    assert document["spdxVersion"] == "SPDX-2.3" and document["dataLicense"] == "CC0-1.0"
    assert document["creationInfo"] == {"created": "2023-11-14T22:13:20Z", "creators": ["Tool: pbuild-0.1.0"]}
    namespace = document["documentNamespace"]
    assert DIGEST.split(":")[1] in namespace and "pbuild.local" not in namespace
    packages = by_name(document)
    image = packages[("pbuild.local/app:latest", "amd64")]
    assert image["versionInfo"] == DIGEST and image["primaryPackagePurpose"] == "CONTAINER"
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": DIGEST.split(":")[1]}]
    assert image["downloadLocation"] == "NOASSERTION"
    assert document["documentDescribes"] == [image["SPDXID"]]
    libc = packages[("libc6", "arm64")]
    assert libc["versionInfo"] == "2.36-9+deb12u13" and libc["supplier"] == "Organization: Debian"
    assert libc["licenseDeclared"] == libc["licenseConcluded"] == "GPL-2.0-or-later AND LGPL-2.1-or-later"
    assert libc["externalRefs"] == [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                     "referenceLocator": "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=arm64"}]
    assert libc["checksums"] == [{"algorithm": "SHA256", "checksumValue": sha(b"libc6arm64")}]
    assert "glibc" in libc["sourceInfo"]
    assert packages[("libc6", "amd64")]["homepage"] == "https://www.gnu.org/software/libc/libc.html"
    assert packages[("mawk", "amd64")]["licenseDeclared"] == "NOASSERTION"
    assert packages[("mawk", "amd64")]["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/mawk@1%3A1.3.4.20200120-3.1?arch=amd64"
    assert packages[("libgcc-s1", "amd64")]["licenseDeclared"] == "GPL-3.0-or-later WITH GCC-exception-3.1"
    numpy = packages[("numpy", "")]
    assert numpy["externalRefs"][0]["referenceLocator"] == "pkg:pypi/numpy@2.4.6"
    assert numpy["licenseConcluded"] == "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0"
    assert packages[("Typing_Extensions", "")]["externalRefs"][0]["referenceLocator"] == \
        "pkg:pypi/typing-extensions@4.16.0"
    assert packages[("protobuf", "")]["licenseDeclared"] == "NOASSERTION"
    files = {f["fileName"]: f for f in document["files"]}
    assert sorted(files) == ["./app/app/__init__.py", "./app/app/program.py"]
    assert files["./app/app/program.py"]["checksums"] == [
        {"algorithm": "SHA1", "checksumValue": hashlib.sha1(b"print(18)\n").hexdigest()},
        {"algorithm": "SHA256", "checksumValue": sha(b"print(18)\n")}]
    assert files["./app/app/program.py"]["licenseConcluded"] == "NOASSERTION"
    relations = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in document["relationships"]}
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", image["SPDXID"]) in relations
    contained = {p["SPDXID"] for p in document["packages"] if p is not image} | {f["SPDXID"] for f in document["files"]}
    assert {(image["SPDXID"], "CONTAINS", i) for i in contained} == relations - {
        ("SPDXRef-DOCUMENT", "DESCRIBES", image["SPDXID"])}
    assert len(contained) == 8 + 2  # 5 Debian packages, 3 wheels, 2 files
    assert not data.endswith(b"\n") and json.dumps(document, sort_keys=True, separators=(",", ":")).encode() == data


def test_license_refs_are_declared_once_with_where_they_came_from(tmp_path: Path) -> None:
    contents = [{"packages": [deb("tzdata", "2025b-0+deb12u2", "all", "LicenseRef-public-domain"),
                              deb("zlib1g", "1:1.2.13", "amd64", "Zlib OR LicenseRef-public-domain"),
                              wheel("oddball", "1.0", "MIT AND LicenseRef-Custom-1.2")]}]
    document, _ = write(tmp_path, contents)
    infos = {i["licenseId"]: i for i in document["hasExtractedLicensingInfos"]}
    assert sorted(infos) == ["LicenseRef-Custom-1.2", "LicenseRef-public-domain"]
    text = infos["LicenseRef-public-domain"]["extractedText"]
    assert "copyright file" in text and "tzdata" in text and "zlib1g" in text
    assert "METADATA" in infos["LicenseRef-Custom-1.2"]["extractedText"]
    assert by_name(document)[("zlib1g", "amd64")]["licenseDeclared"] == "Zlib OR LicenseRef-public-domain"


def test_a_license_that_is_no_spdx_expression_is_noassertion_with_a_comment(tmp_path: Path) -> None:
    document, _ = write(tmp_path, [{"packages": [wheel("protobuf", "7.36.2", "3-Clause BSD License")]}])
    package = by_name(document)[("protobuf", "")]
    assert package["licenseDeclared"] == package["licenseConcluded"] == "NOASSERTION"
    assert "3-Clause BSD License" in package["licenseComments"]
    assert "hasExtractedLicensingInfos" not in document


def test_ids_are_valid_and_unique_across_architectures_and_sanitizing(tmp_path: Path) -> None:
    # libc6 on two architectures, and two names that sanitize to one id (a+b and a.b keep "a", "b").
    contents = [{"packages": [deb("libc6", "2.36", "amd64", "MIT"), deb("libc6", "2.36", "arm64", "MIT"),
                              deb("a+b", "1", "amd64", None), deb("a_b", "1", "amd64", None)]},
                {"files": [program_file("x/a+b"), program_file("x/a_b")]}]
    document, _ = write(tmp_path, contents)
    ids = [e["SPDXID"] for e in (*document["packages"], *document["files"])]
    assert len(ids) == len(set(ids)) == 7
    assert all(i.startswith("SPDXRef-") for i in ids)


def test_the_same_inputs_in_any_order_give_the_same_bytes(tmp_path: Path) -> None:
    _, first = write(tmp_path, CONTENTS)
    shuffled = []
    rng = random.Random(15)
    for content in CONTENTS:
        copy = {key: rng.sample(value, len(value)) for key, value in content.items()}
        shuffled.append(copy)
    rng.shuffle(shuffled)
    _, second = write(tmp_path, shuffled)
    assert first == second
    _, other = write(tmp_path, CONTENTS, image_digest="sha256:" + "1" * 64)
    assert json.loads(other)["documentNamespace"] != json.loads(first)["documentNamespace"]


def test_layers_repeat_packages_and_upper_files_win(tmp_path: Path) -> None:
    lower = {"packages": [wheel("numpy", "2.4.6", "BSD-3-Clause")], "files": [program_file(data=b"old\n")]}
    upper = {"packages": [wheel("numpy", "2.4.6", "BSD-3-Clause")], "files": [program_file(data=b"new\n")]}
    document, _ = write(tmp_path, [lower, {}, upper])
    assert [p["name"] for p in document["packages"]].count("numpy") == 1
    assert document["files"][0]["checksums"][1]["checksumValue"] == sha(b"new\n")


def test_an_image_without_contents_is_still_a_valid_document(tmp_path: Path) -> None:
    document, _ = write(tmp_path, [])
    assert [p["primaryPackagePurpose"] for p in document["packages"]] == ["CONTAINER"]
    assert document["files"] == [] and document["packages"][0]["filesAnalyzed"] is False


def test_a_digest_that_is_not_sha256_is_refused() -> None:
    with pytest.raises(ValueError, match="not sha256"):
        spdx_document(image_name="a", image_digest="md5:00", platform="linux/amd64", contents=[], epoch=0,
                      tool_version="0")
