"""What the SBOM says about a wheel: its name, version, license and homepage, from its METADATA.

The license is taken, in this order, from ``License-Expression`` (PEP 639), from a ``License``
field that is itself a valid SPDX expression (older wheels often write ``MIT`` there, but also
whole license texts or names such as ``3-Clause BSD License``, which are not taken), and from
``License :: OSI Approved :: ...`` trove classifiers that name exactly one SPDX license; else
there is none (the SBOM says NOASSERTION). Expressions are validated and canonicalized by
``packaging.licenses``, which holds the SPDX license list.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path
from typing import Any

from installer.sources import WheelFile
from packaging.metadata import RawMetadata, parse_email
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from pbuild.rules.oci.sbom import license_expression

#: Trove license classifiers → SPDX ids. Hand-kept: neither packaging nor the classifier list
#: maps classifiers to SPDX, and PEP 639 deprecates them rather than defining a mapping. Only
#: classifiers that name one license (and one version) are here; "BSD License", "Apache Software
#: License" or "GNU General Public License (GPL)" do not say which one, and give no license.
TROVE_TO_SPDX = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: Mozilla Public License 1.1 (MPL 1.1)": "MPL-1.1",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "License :: OSI Approved :: zlib/libpng License": "Zlib",
    "License :: OSI Approved :: Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "License :: OSI Approved :: European Union Public Licence 1.2 (EUPL 1.2)": "EUPL-1.2",
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "License :: OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0-only",
    "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "License :: CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}

_URL = re.compile(r"https?://[^\s]+")


def license_of(raw: RawMetadata) -> str | None:
    """The wheel's license as an SPDX expression (see the module docstring for the order), or None."""
    for field in (raw.get("license_expression"), raw.get("license")):
        expression = license_expression(field)
        if expression:
            return expression
    ids = sorted({TROVE_TO_SPDX[c] for c in raw.get("classifiers", []) if c in TROVE_TO_SPDX})
    # Several license classifiers mean the project may be used under any of them (how PyPI reads them).
    return license_expression(" OR ".join(ids)) if ids else None


def homepage_of(raw: RawMetadata) -> str | None:
    """``Home-page``, else the ``Project-URL`` labelled homepage (labels compared as PEP 753 normalizes them)."""
    candidates = [raw.get("home_page")]
    for label, url in sorted(raw.get("project_urls", {}).items()):
        if re.sub(r"[^a-z0-9]", "", label.lower()) in ("homepage", "home"):
            candidates.append(url)
    for candidate in candidates:
        if candidate and _URL.fullmatch(candidate.strip()):
            return candidate.strip()
    return None


def wheel_package(path: str) -> dict[str, Any]:
    """The ``contents`` record of the wheel at ``path`` (see the issue 15 contract's ``packages``)."""
    filename = posixpath.basename(path)
    with WheelFile.open(Path(path)) as source:
        raw, _ = parse_email(source.read_dist_info("METADATA"))
    try:
        name, version, _, _ = parse_wheel_filename(filename)
        project, version_text = str(name), str(version)
    except InvalidWheelFilename:
        project, version_text = canonicalize_name(raw.get("name", filename)), raw.get("version", "")
    with open(path, "rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    record: dict[str, Any] = {"type": "wheel", "name": project, "version": version_text, "filename": filename,
                              "sha256": sha256, "license": license_of(raw)}
    homepage = homepage_of(raw)
    if homepage:
        record["homepage"] = homepage
    return record
