"""SBOMs end to end: ``pbuild sbom //app:image`` in a clone of this repository, validated by spdx-tools,
and the license of every wheel of the committed requirements.lock as read from its real METADATA.

The wheels come from pip (through the host's pip configuration) and the Debian packages from the
host's apt sources, as for every build of //app:image.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.licenses import canonicalize_license_expression
from packaging.utils import canonicalize_name
from pbuild.rules.oci.wheelmeta import TROVE_TO_SPDX, wheel_package
from pbuild.rules.python.lockfile import LockedProject, parse_lock
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tests.support.imageclone import clone_app_workspace
from tests.support.runner import Runner, assert_user_error

pytestmark = pytest.mark.slow

# Facts about real wheels of the lock, read from their METADATA by hand: one for each way a
# license is found (checked only while the lock pins these versions).
KNOWN = {
    ("numpy", "2.4.6"): "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0",  # License-Expression
    ("rich", "15.0.0"): "MIT",  # License: MIT
    ("markdown-it-py", "4.3.0"): "MIT",  # only the MIT classifier
    ("pathspec", "1.1.1"): "MPL-2.0",  # only the MPL 2.0 classifier
    ("protobuf", "7.36.2"): None,  # License: 3-Clause BSD License, no classifier
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runner]]:
    """A clone with //app:image and every locked wheel built (one cache for the module's tests)."""
    tmp = tmp_path_factory.mktemp("sbom")
    ws = clone_app_workspace(tmp / "clone")
    pbuild = Runner(tmp)
    result = pbuild("build", "//app:image", "//third_party/python/...", cwd=ws, timeout=900)
    assert result.code == 0, result
    yield ws, pbuild


def locked(ws: Path) -> dict[str, LockedProject]:
    return parse_lock((ws / "third_party/python/requirements.lock").read_text()).by_name()


def closure(projects: dict[str, LockedProject], roots: list[str]) -> set[str]:
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += projects[name].requires
    return seen


def own_metadata(wheel: Path) -> email.message.Message:
    """The wheel's own METADATA (not a vendored project's), read with the stdlib's email parser."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return email.parser.BytesParser().parsebytes(archive.read(name))


def test_every_locked_wheel_gets_its_license_from_its_metadata(built: tuple[Path, Runner]) -> None:
    ws, _ = built
    wheels = {p.name: p for p in (ws / "pbuild-out/third_party/python").rglob("*.whl")}
    seen_ways: set[str] = set()
    for project in locked(ws).values():
        path = wheels[project.filename]
        record = wheel_package(str(path))
        assert (record["name"], record["version"]) == (project.name, project.version)
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == project.sha256
        meta = own_metadata(path)
        expression, field = meta.get("License-Expression"), meta.get("License")
        classifiers = [TROVE_TO_SPDX[c] for c in meta.get_all("Classifier", []) if c in TROVE_TO_SPDX]
        if expression:
            seen_ways.add("expression")
            assert record["license"] == str(canonicalize_license_expression(expression)), project.name
        elif record["license"] is not None and field and record["license"] == str(
                canonicalize_license_expression(field)):
            seen_ways.add("field")
        elif classifiers:
            seen_ways.add("classifier")
            assert record["license"] == " OR ".join(sorted(set(classifiers))), project.name
        else:
            seen_ways.add("none")
            assert record["license"] is None, project.name
        if (project.name, project.version) in KNOWN:
            assert record["license"] == KNOWN[(project.name, project.version)], project.name
    assert {"expression", "field", "classifier", "none"} <= seen_ways, seen_ways


def test_pbuild_sbom_lists_the_closure_and_the_program(built: tuple[Path, Runner], tmp_path: Path) -> None:
    ws, pbuild = built
    result = pbuild("sbom", "//app:image", "-q", cwd=ws, timeout=600)
    assert result.code == 0, result
    out = ws / "pbuild-out/app/image"
    assert result.out.encode() == (out / "sbom.spdx.json").read_bytes()
    path = tmp_path / "app.spdx.json"
    path.write_text(result.out)
    messages = validate_full_spdx_document(parse_file(str(path)))
    assert messages == [], "\n".join(m.validation_message for m in messages)
    document: dict[str, Any] = json.loads(result.out)
    digest = (out / "digest").read_text().strip()
    image = next(p for p in document["packages"] if p.get("primaryPackagePurpose") == "CONTAINER")
    assert image["versionInfo"] == digest and image["name"] == "pbuild.local/app:latest"
    projects = locked(ws)
    wheels = {canonicalize_name(p["name"]): p for p in document["packages"]
              if p["externalRefs"][0]["referenceLocator"].startswith("pkg:pypi/")}
    assert set(wheels) == closure(projects, ["numpy"])
    for name, package in wheels.items():
        assert package["versionInfo"] == projects[name].version
        assert package["checksums"] == [{"algorithm": "SHA256", "checksumValue": projects[name].sha256}]
    program = (ws / "app/program.py").read_bytes()
    files = {f["fileName"]: f for f in document["files"]}
    assert files["./app/app/program.py"]["checksums"] == [
        {"algorithm": "SHA1", "checksumValue": hashlib.sha1(program).hexdigest()},
        {"algorithm": "SHA256", "checksumValue": hashlib.sha256(program).hexdigest()}]
    assert not any(name.endswith(".pyc") for name in files)
    # Every package of the Debian lock's python3 closure, with the .deb's sha256 the lock pins.
    lock = json.loads((ws / "third_party/debian/debian.lock.json").read_text())["targets"]["python3"]
    debs = {p["name"]: p for p in document["packages"]
            if p["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/")}
    assert set(debs) == {p["name"] for p in lock["packages"]}
    for pinned in lock["packages"]:
        package = debs[pinned["name"]]
        assert package["versionInfo"] == pinned["version"], pinned["name"]
        assert package["checksums"] == [{"algorithm": "SHA256", "checksumValue": pinned["sha256"]}], pinned["name"]
    # Machine-readable copyright files give licences (zlib1g's is DEP-5: Zlib).
    assert debs["zlib1g"]["licenseDeclared"] == "Zlib"
    again = pbuild("sbom", "//app:image", "-q", cwd=ws, timeout=600)
    assert again.code == 0 and again.out == result.out


def test_pbuild_sbom_of_a_target_that_is_no_image(built: tuple[Path, Runner]) -> None:
    ws, pbuild = built
    assert_user_error(pbuild("sbom", "//app:program", cwd=ws, timeout=600), 2,
                      "//app:program is a py_binary target, not an image", "pbuild sbom takes an image target")


def test_pbuild_sbom_by_platform(built: tuple[Path, Runner]) -> None:
    ws, pbuild = built
    amd64 = pbuild("sbom", "//app:image", "--platform", "linux/amd64", "-q", cwd=ws, timeout=600)
    assert amd64.code == 0 and amd64.out.encode() == (ws / "pbuild-out/app/image/sbom.spdx.json").read_bytes()
    assert_user_error(pbuild("sbom", "//app:image", "--platform", "linux/arm64", cwd=ws, timeout=600), 2,
                      "//app:image is built for linux/amd64, not linux/arm64", "[platforms] images")
    assert_user_error(pbuild("sbom", "//app:image", "--platform", "windows/amd64", cwd=ws), 2,
                      "--platform windows/amd64: unknown platform")
