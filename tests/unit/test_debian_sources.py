"""Reading the host's apt sources (one-line and deb822 formats) and choosing a mirror."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbuild.rules.debian.sources import AptSource, SourcesError, mirror_for_suite, read_apt_sources


def _etc(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / "etc/apt" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_both_formats_and_ignored_files(tmp_path: Path) -> None:
    _etc(tmp_path, {
        "sources.list": "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
                        "deb-src http://m.example/debian bookworm main\n",
        "sources.list.d/sec.sources": "Types: deb deb-src\nURIs: http://s.example/debian-security/\n"
                                      "Suites: bookworm-security\nComponents: main\nSigned-By: /s.gpg\n\n"
                                      "Types: deb\nURIs: http://off.example\nSuites: sid\nComponents: main\nEnabled: no\n",
        "sources.list.d/x.list.disabled": "deb http://never.example/ sid main\n",
    })
    sources = read_apt_sources(str(tmp_path))
    assert sources == [
        AptSource("http://m.example/debian", ("bookworm",), ("main", "contrib"), "/k.gpg"),
        AptSource("http://s.example/debian-security", ("bookworm-security",), ("main",), "/s.gpg"),
    ]
    assert mirror_for_suite("bookworm-security", sources=sources, environ={}).uri == "http://s.example/debian-security"


def test_override_by_flag_and_env() -> None:
    assert mirror_for_suite("bookworm", mirror="http://flag.example/", environ={}, sources=[]).uri == "http://flag.example"
    env = {"PBUILD_DEBIAN_MIRROR": "http://env.example/debian"}
    assert mirror_for_suite("bookworm", environ=env, sources=[]).uri == "http://env.example/debian"


def test_no_source_for_suite() -> None:
    sources = [AptSource("http://m.example", ("bookworm",), ("main",))]
    with pytest.raises(SourcesError, match="no apt source serves the Debian suite 'trixie'") as info:
        mirror_for_suite("trixie", environ={}, sources=sources)
    assert "bookworm" in info.value.message
    assert info.value.hint and "--mirror" in info.value.hint
