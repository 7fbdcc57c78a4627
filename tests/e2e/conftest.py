"""The e2e tests' shared fixtures: a busybox image and a layer store per test module, the
environment of one test's launcher runs (its own runtime dir, containers killed afterwards), and
for remote execution one PostgreSQL per test session with a fresh database per test, a BuildGrid
with execution on it and two real ``pbuild worker``s."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launcher import kill_leftovers
from tests.support.peers import BuildGridExecution, Postgres, buildgrid_execution_server, postgres_server
from tests.support.testimages import make_busybox_image
from tests.support.workers import WorkerProcess, workers


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


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (per xdist worker): starting one costs ~1 s."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as server:
        yield server


_databases = itertools.count()


@pytest.fixture
def fresh_db(postgres: Postgres) -> str:
    """A new, empty database on the session's cluster: what one test's BuildGrid keeps its
    scheduler state in, so no job or bot of another test is seen."""
    return postgres.create_database(f"t{os.getpid()}_{next(_databases)}")


@pytest.fixture
def grid(tmp_path: Path, postgres: Postgres, fresh_db: str) -> Iterator[BuildGridExecution]:
    """BuildGrid's Execution and Bots services on this test's own database."""
    with buildgrid_execution_server(tmp_path / "bg", postgres, database=fresh_db) as server:
        yield server


@pytest.fixture
def two_workers(tmp_path: Path, grid: BuildGridExecution) -> Iterator[list[WorkerProcess]]:
    """Two ``pbuild worker`` processes (w1, w2, one slot each) serving ``grid``."""
    (tmp_path / "workers").mkdir()
    with workers(tmp_path / "workers", grid.url, ("w1", "w2")) as started:
        yield started
