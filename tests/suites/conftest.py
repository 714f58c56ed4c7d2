"""Inner pytest runs: each test writes a small project into its ``pytester`` folder and runs
pytest on it in a subprocess, the way a user's CI would."""

from __future__ import annotations

import pytest

from tests.helpers import AlembicProject, drop_ours


@pytest.fixture(autouse=True)
def _server_stops_with_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs stop their embedded server as they end, as on CI (test_idle_server.py
    covers the server that outlives a run)."""
    monkeypatch.setenv("DBBRANCH_EMBEDDED_IDLE", "0")


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner run is a pytest run of its own: it must not see this worker's xdist variables
    (the warm pool sizes itself by the worker count: with -n 3 outside, an inner run without
    -n took itself for one of three workers on two cores and ran without a pool)."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    """Each inner run starts from a server with nothing of ours on it."""
    drop_ours(embedded_url)


@pytest.fixture
def alembic_project(pytester: pytest.Pytester) -> AlembicProject:
    """The widgets project (r1, r2) in the inner run's own folder."""
    return AlembicProject(pytester.path).add_widgets()
