"""The dependency resolver over a Packages index: closure, alternatives, Provides, versions, errors."""

from __future__ import annotations

import pytest
from pbuild.rules.debian.resolve import Index, ResolveError, resolve


def _index(*paragraphs: dict[str, str], suite: str = "bookworm") -> Index:
    full = []
    for i, fields in enumerate(paragraphs):
        full.append((suite, {"Architecture": "amd64", "Version": "1.0", "Filename": f"pool/{i}.deb",
                             "SHA256": f"{i:064x}", "Size": "10", **fields}))
    return Index.from_paragraphs(full, "amd64")


def test_closure_with_pre_depends_and_versions() -> None:
    index = _index(
        {"Package": "app", "Depends": "libc6 (>= 2.34), libfoo", "Pre-Depends": "base"},
        {"Package": "libc6", "Version": "2.36-9"},
        {"Package": "libc6", "Version": "2.31-1"},
        {"Package": "libfoo", "Depends": "libc6"},
        {"Package": "base", "Architecture": "all"},
        {"Package": "unrelated"},
        {"Package": "other-arch", "Architecture": "arm64"},
    )
    closure = resolve(index, ["app"])
    assert [r.package.name for r in closure] == ["app", "base", "libc6", "libfoo"]
    by_name = {r.package.name: r for r in closure}
    assert by_name["libc6"].package.version == "2.36-9"
    assert by_name["app"].dependencies == ("base", "libc6", "libfoo")


def test_highest_version_that_satisfies_wins() -> None:
    index = _index(
        {"Package": "app", "Depends": "lib (<< 2.0)"},
        {"Package": "lib", "Version": "2.1"},
        {"Package": "lib", "Version": "1.5"},
    )
    assert {r.package.name: r.package.version for r in resolve(index, ["app"])}["lib"] == "1.5"


def test_alternatives_prefer_what_is_chosen_then_first() -> None:
    index = _index(
        {"Package": "app", "Depends": "b, a | b"},
        {"Package": "a"},
        {"Package": "b"},
        {"Package": "tool", "Depends": "missing | a"},
    )
    assert [r.package.name for r in resolve(index, ["app"])] == ["app", "b"]
    assert [r.package.name for r in resolve(index, ["tool"])] == ["a", "tool"]


def test_virtual_packages_through_provides() -> None:
    index = _index(
        {"Package": "ca-certificates", "Depends": "debconf (>= 0.5) | debconf-2.0"},
        {"Package": "cdebconf", "Provides": "debconf-2.0"},
        {"Package": "needs-versioned", "Depends": "virt (>= 2)"},
        {"Package": "prov-unversioned", "Provides": "virt"},
        {"Package": "prov-versioned", "Provides": "virt (= 3)"},
    )
    assert [r.package.name for r in resolve(index, ["ca-certificates"])] == ["ca-certificates", "cdebconf"]
    assert [r.package.name for r in resolve(index, ["needs-versioned"])] == ["needs-versioned", "prov-versioned"]


def test_later_suite_with_higher_version_wins() -> None:
    index = Index.from_paragraphs([
        ("bookworm", {"Package": "tz", "Version": "2024a-0+deb12u1", "Architecture": "all", "Filename": "p/1",
                      "SHA256": "1" * 64, "Size": "1"}),
        ("bookworm-updates", {"Package": "tz", "Version": "2025b-0+deb12u1", "Architecture": "all",
                              "Filename": "p/2", "SHA256": "2" * 64, "Size": "1"}),
    ], "amd64")
    (only,) = resolve(index, ["tz"])
    assert only.package.suite == "bookworm-updates"


def test_unknown_package_suggests_near_names() -> None:
    index = _index({"Package": "python3.11-minimal"}, {"Package": "libpython3.11-stdlib"})
    with pytest.raises(ResolveError) as info:
        resolve(index, ["python3.11-minmal", "nonexistent-zzz"], context="//third_party/debian:py")
    message = info.value.message
    assert "no such Debian package (//third_party/debian:py)" in message
    assert "python3.11-minmal (did you mean: python3.11-minimal" in message
    assert "nonexistent-zzz" in message


def test_unsatisfiable_dependency_names_the_chain() -> None:
    index = _index(
        {"Package": "app", "Depends": "lib"},
        {"Package": "lib", "Depends": "libc6 (>= 9.0)"},
        {"Package": "libc6", "Version": "2.36-9"},
    )
    with pytest.raises(ResolveError) as info:
        resolve(index, ["app"])
    message = info.value.message
    assert "unsatisfiable Debian dependency" in message
    assert "app 1.0 -> lib 1.0 needs libc6 (>= 9.0)" in message
    assert "libc6: 2.36-9" in message
