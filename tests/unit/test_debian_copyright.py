"""Debian copyright files as SPDX licence expressions, and the contents records of a Debian layer.

The real copyright files of the committed lock's packages are parsed in
tests/e2e/test_debian_platforms.py (they come from the built layer); these are the rules.
"""

from __future__ import annotations

import pytest
from packaging.licenses import canonicalize_license_expression
from pbuild.rules.debian.contents import copyright_text, package_contents
from pbuild.rules.debian.copyright import (
    is_machine_readable,
    license_expression,
    short_name_expression,
    spdx_id,
)
from pbuild.rules.debian.deb import read_deb
from pbuild.rules.oci.layerwriter import LayerEntry

from tests.support.debfixtures import DebSpec, make_deb

FORMAT = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"


@pytest.mark.parametrize(("name", "spdx"), [
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-3.0+", "GPL-3.0-or-later"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("Expat", "MIT"),
    ("Apache-2.0", "Apache-2.0"),
    ("Zlib", "Zlib"),
    ("zlib", "Zlib"),
    ("ISC", "ISC"),
    ("PSF-2", "PSF-2.0"),
    ("Artistic", "Artistic-1.0"),
    ("MPL-2.0", "MPL-2.0"),
    ("public-domain", "LicenseRef-public-domain"),
    ("Sleepycat", "Sleepycat"),
    # No SPDX identifier: a LicenseRef with [^A-Za-z0-9.-] replaced by "-".
    ("BSD-variant", "LicenseRef-BSD-variant"),
    ("GFDL-NIV-1.3+", "LicenseRef-GFDL-NIV-1.3-"),
    ("__AUTO_PERMISSIVE__", "LicenseRef---AUTO-PERMISSIVE--"),
    ("GPL", "LicenseRef-GPL"),
])
def test_short_names_map_to_spdx(name: str, spdx: str) -> None:
    assert spdx_id(name) == spdx


@pytest.mark.parametrize(("short", "expression"), [
    ("BSD-3-clause or GPL-2", "(BSD-3-Clause OR GPL-2.0-only)"),
    ("Artistic or GPL-1+", "(Artistic-1.0 OR GPL-1.0-or-later)"),
    ("GPL-2+ and LGPL-2.1+", "GPL-2.0-or-later AND LGPL-2.1-or-later"),
    # "and" binds tighter than "or"; a comma separates alternatives as "or" does.
    ("MIT or GPL-2+ and BSD-3-clause", "((BSD-3-Clause AND GPL-2.0-or-later) OR MIT)"),
    ("GPL-2+, LGPL-2.1+", "(GPL-2.0-or-later OR LGPL-2.1-or-later)"),
    ("GPL-2+ with Texinfo exception", "LicenseRef-GPL-2--with-Texinfo-exception"),
    ("  GPL-2+   OR   Expat ", "(GPL-2.0-or-later OR MIT)"),
])
def test_expressions(short: str, expression: str) -> None:
    assert short_name_expression(short) == expression
    canonicalize_license_expression(expression)  # a valid SPDX expression


def test_files_paragraphs_joined_with_and_deduplicated_sorted() -> None:
    text = FORMAT + (
        "Upstream-Name: x\n\n"
        "Files: *\nCopyright: 2020 A\nLicense: LGPL-2.1+\n\n"
        "Files: debian/*\nCopyright: 2021 B\nLicense: GPL-2+\n\n"
        "Files: lib/*\nCopyright: 2021 C\nLicense: GPL-2+ and LGPL-2.1+\n\n"
        "Files: zlib/*\nCopyright: 2021 D\nLicense: Zlib or Expat\n\n"
        "License: GPL-2+\n This program is free software...\n\n"
        "License: Unreferenced\n Standalone license paragraphs only give the texts.\n"
    )
    assert license_expression(text) == "(MIT OR Zlib) AND GPL-2.0-or-later AND LGPL-2.1-or-later"


def test_header_license_counts() -> None:
    assert license_expression(FORMAT + "License: Apache-2.0\n\nFiles: *\nCopyright: x\nLicense: Apache-2.0\n") == \
        "Apache-2.0"


def test_not_machine_readable_is_none() -> None:
    assert license_expression("This is the Debian prepackaged version of the GNU C Library.\n"
                              "License: GPL-2+\n") is None
    assert license_expression("Format: some other format\n\nFiles: *\nLicense: MIT\n") is None
    assert license_expression(FORMAT + "Upstream-Name: x\n") is None  # DEP-5 without licences
    # The DEP-5 drafts' URLs count as well.
    assert is_machine_readable("Format-Specification: http://svn.debian.org/wsvn/dep/web/deps/dep5.mdwn\n") is False
    assert is_machine_readable("Format: http://dep.debian.net/deps/dep5\n") is True


def test_copyright_found_through_a_linked_doc_folder() -> None:
    # libpython3.11-stdlib's /usr/share/doc/libpython3.11-stdlib is a link to libpython3.11-minimal's folder.
    entries = {e.path: e for e in [
        LayerEntry("usr/share/doc/a/copyright", "file", 0o644, data=(FORMAT + "\nFiles: *\nLicense: ISC\n").encode()),
        LayerEntry("usr/share/doc/b", "symlink", 0o777, target="a"),
        LayerEntry("usr/share/doc/c/copyright", "symlink", 0o777, target="../b/copyright"),
        LayerEntry("usr/share/doc/d/copyright", "symlink", 0o777, target="/usr/share/doc/missing/copyright"),
    ]}
    texts = {name: copyright_text(entries, name) for name in "abcde"}
    assert texts["a"] == texts["b"] == texts["c"] and texts["a"] is not None and "ISC" in texts["a"]
    assert texts["d"] is None and texts["e"] is None


def test_package_contents_records() -> None:
    spec = DebSpec("libz", version="1:1.2.13-1", files={"usr/share/doc/libz/copyright": (
        FORMAT + "\nFiles: *\nCopyright: x\nLicense: Zlib\n").encode()})
    other = DebSpec("tool", architecture="all")
    debs = [read_deb(make_deb(s), name=s.name) for s in (other, spec)]
    locked = [{"name": "tool", "version": "1.0-1", "architecture": "all", "filename": "tool_1.0-1_all.deb",
               "sha256": "a" * 64},
              {"name": "libz", "version": "1:1.2.13-1", "architecture": "amd64",
               "filename": "libz_1.2.13-1_amd64.deb", "sha256": "b" * 64}]
    records = package_contents(debs, locked)
    assert records == [
        {"type": "deb", "name": "libz", "version": "1:1.2.13-1", "architecture": "amd64",
         "filename": "libz_1.2.13-1_amd64.deb", "sha256": "b" * 64, "license": "Zlib", "source": "libz"},
        {"type": "deb", "name": "tool", "version": "1.0-1", "architecture": "all", "filename": "tool_1.0-1_all.deb",
         "sha256": "a" * 64, "license": None, "source": "tool"},
    ]


def test_without_packaging_licenses_the_kept_table_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older packaging (no ``packaging.licenses``) still maps the common names; others become LicenseRefs."""
    import sys

    monkeypatch.setitem(sys.modules, "packaging.licenses", None)  # makes the import raise ImportError
    assert [spdx_id(n) for n in ("GPL-2+", "LGPL-2.1", "Expat", "bsd-3-clause", "ISC", "Zlib", "public-domain")] == [
        "GPL-2.0-or-later", "LGPL-2.1-only", "MIT", "BSD-3-Clause", "ISC", "Zlib", "LicenseRef-public-domain"]
    assert spdx_id("Sleepycat") == "LicenseRef-Sleepycat"
