"""The launcher tests' fixtures: a busybox image and a layer store per test module, and the
environment of one test's launcher runs (its own runtime dir, containers killed afterwards)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launcher import kill_leftovers
from tests.support.testimages import make_busybox_image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"oci:{make_busybox_image(tmp_path_factory.mktemp('image') / 'layout')}"


@pytest.fixture(scope="module")
def layer_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("layers")


@pytest.fixture
def env(tmp_path: Path, layer_store: Path) -> Iterator[dict[str, str]]:
    runtime = tmp_path / "runtime"
    yield {**os.environ, "PBUILD_LAYER_STORE": str(layer_store), "PBUILD_RUNTIME_DIR": str(runtime)}
    kill_leftovers(runtime)
