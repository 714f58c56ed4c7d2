"""Fixtures of the integration layer: the package's stateful core driven in process against
the session's embedded server (or the machine's server, for ``system_server`` tests).

Every manager gets a fresh run id, as a new pytest run would; two managers with the same run
id stand for two xdist workers of one run. Nothing a test makes outlives it: managers are
closed and whatever carries our tag is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.settings import Settings
from tests.helpers import SECRET, AlembicProject, drop_ours
from tests.integration.support import MakeManager


@pytest.fixture
def settings(clean_embedded: str, alembic_project: AlembicProject) -> Settings:
    """The widgets project on the embedded server. No warm pool (its size would depend on
    the worker count and CPU cores); the pool has tests of its own."""
    return Settings(
        url=clean_embedded, alembic_ini=str(alembic_project.ini), root=alembic_project.root, pool_size=0
    )


@pytest.fixture
def make_manager(settings: Settings) -> Iterator[MakeManager]:
    """``make_manager(run_id=None, worker_id=None, reap_on_start=True, base=None, **overrides)``:
    a manager for ``base`` (default: the ``settings`` fixture) with some settings changed.
    Every manager made is closed at teardown, then what carries our tag is dropped."""
    made: list[BranchManager] = []
    urls: set[str] = set()

    def make(
        run_id: str | None = None,
        worker_id: str | None = None,
        reap_on_start: bool = True,
        base: Settings | None = None,
        **overrides: Any,
    ) -> BranchManager:
        chosen = dataclasses.replace(base or settings, **overrides)
        if chosen.url:
            urls.add(chosen.url)
        manager = BranchManager(
            chosen, run_id=run_id or names.new_run_id(), worker_id=worker_id, reap_on_start=reap_on_start
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()
    for url in urls:
        # A server a test could not reach holds nothing of ours.
        with contextlib.suppress(psycopg.OperationalError):
            drop_ours(url)


@pytest.fixture
def backend(clean_embedded: str, tmp_path: Path) -> Iterator[PostgresBackend]:
    """A bare PostgreSQL backend on the embedded server, with a lock folder of its own."""
    folder = tmp_path / "locks"
    folder.mkdir()
    made = PostgresBackend(ServerAddress.parse(clean_embedded), lock_folder=folder)
    yield made
    made.close()
    drop_ours(clean_embedded)


@pytest.fixture
def secret_url(embedded_server: ServerAddress) -> Iterator[str]:
    """The embedded server as the ``secretive`` role, which logs in with ``SECRET``: every
    message a test checks can then be searched for the password. That role's databases are
    its own, so they are cleaned up through its URL."""
    url = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    ).url()
    drop_ours(url)
    yield url
    drop_ours(url)
