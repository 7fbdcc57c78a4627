"""A wheel's license and homepage from its METADATA (rules/oci/wheelmeta.py), in the documented order.

The real wheels of the committed lock are checked in tests/e2e/test_sbom.py; these cover each rule
on METADATA shaped like what those wheels carry, and a wheel built here end to end.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from packaging.metadata import parse_email
from pbuild.rules.oci.wheelmeta import TROVE_TO_SPDX, homepage_of, license_of, wheel_package

from tests.support.wheelmaker import make_wheel


def meta(*lines: str) -> str:
    return "\n".join(("Metadata-Version: 2.4", "Name: demo", "Version: 1.0", *lines)) + "\n"


def license_from(*lines: str) -> str | None:
    raw, _ = parse_email(meta(*lines))
    return license_of(raw)


def test_license_expression_comes_first_and_is_canonicalized() -> None:
    assert license_from("License-Expression: apache-2.0 or bsd-2-clause", "License: GPL",
                        "Classifier: License :: OSI Approved :: MIT License") == "Apache-2.0 OR BSD-2-Clause"


def test_a_license_field_is_taken_only_when_it_is_an_spdx_expression() -> None:
    assert license_from("License: MIT") == "MIT"
    assert license_from("License: BSD-2-Clause or Apache-2.0") == "BSD-2-Clause OR Apache-2.0"
    assert license_from("License: 3-Clause BSD License") is None
    assert license_from("License: UNKNOWN") is None
    # A whole license text in the field is no expression; the classifier decides.
    assert license_from("License: Copyright (c) 2005 The authors. Permission is hereby granted...",
                        "Classifier: License :: OSI Approved :: MIT License") == "MIT"


def test_classifiers_map_to_spdx_ids_and_ambiguous_ones_give_nothing() -> None:
    assert license_from("Classifier: License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)") == "MPL-2.0"
    assert license_from("Classifier: License :: OSI Approved :: MIT License",
                        "Classifier: License :: OSI Approved :: Apache Software License") == "MIT"
    assert license_from("Classifier: License :: OSI Approved :: BSD License") is None
    assert license_from("Classifier: License :: OSI Approved :: MIT License",
                        "Classifier: License :: OSI Approved :: ISC License (ISCL)") == "ISC OR MIT"
    assert license_from() is None


def test_every_mapped_classifier_gives_a_valid_spdx_id() -> None:
    for classifier, spdx in TROVE_TO_SPDX.items():
        assert license_from(f"Classifier: {classifier}") == spdx


def test_homepage_from_home_page_or_the_project_url_labelled_so() -> None:
    raw, _ = parse_email(meta("Home-page: https://example.org/demo"))
    assert homepage_of(raw) == "https://example.org/demo"
    raw, _ = parse_email(meta("Project-URL: Source, https://example.org/src", "Project-URL: Home Page, https://example.org/"))
    assert homepage_of(raw) == "https://example.org/"
    raw, _ = parse_email(meta("Home-page: UNKNOWN", "Project-URL: Source, https://example.org/src"))
    assert homepage_of(raw) is None


def test_wheel_package_reads_the_wheels_own_metadata(tmp_path: Path) -> None:
    path = Path(make_wheel(str(tmp_path), "demo_pkg", "2.0"))
    record = wheel_package(str(path))
    assert record == {"type": "wheel", "name": "demo-pkg", "version": "2.0", "filename": path.name,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "license": None}
