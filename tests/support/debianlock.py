"""The repository's committed Debian lock, as fixture workspaces without a ``[platforms]`` table need it."""

from __future__ import annotations

import json

from pbuild.lib.determinism import pretty_json

from tests.support.paths import REPO

COMMITTED = REPO / "third_party/debian/debian.lock.json"


def single_platform_lock() -> str:
    """The committed lock as ``pbuild lock --debian`` writes it for linux/amd64 alone.

    The committed lock covers the repository's ``[platforms] locks``, whose first platform is
    linux/amd64; its ``packages`` are that platform's closure, so dropping the other platforms'
    closures and recording the architecture gives exactly the single-platform lock.
    """
    data = json.loads(COMMITTED.read_text())
    for entry in data["targets"].values():
        request = entry["request"]
        platforms = request.pop("platforms", ["linux/amd64"])
        assert platforms[0] == "linux/amd64", platforms
        request["architecture"] = "amd64"
        entry.pop("platforms", None)
    return pretty_json(data)
