"""Fixtures shared by every layer: real PostgreSQL servers, Alembic projects, the emulator.

Three layers live below: ``unit/`` (no server), ``integration/`` (in process, against the
session's embedded server in RAM) and ``suites/`` (inner pytest runs, the way users run the
plugin). Tests marked ``system_server`` use the machine's PostgreSQL at 127.0.0.1:5432 as a
role that has CREATEDB but is not a superuser (the "existing server by URL" path).
Helpers that are not fixtures are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import SECRET, SYSTEM_ADMIN_URL, AlembicProject, create_database, drop_database, drop_ours

LAKEBASE_PROJECT = "demo"
LAKEBASE_SOURCE = "lakebase_prod_source"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's DBBRANCH_* variables must not change what the tests see."""
    for key in list(os.environ):
        if key.startswith("DBBRANCH_") and key != "DBBRANCH_TEST_SYSTEM_URL":
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """This session's own server in RAM, started with the plugin's EmbeddedServer (one per
    xdist worker, so workers never see each other's branches)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path_factory.getbasetemp()
    folder = base / f"dbbranch-tests-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        server = EmbeddedServer(folder)
        address = server.acquire("tests")
        _add_password_role(server, address)
        yield server
        server.release("tests")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _add_password_role(server: EmbeddedServer, address: ServerAddress) -> None:
    """A role that must give a password, so 'wrong password' is a real server answer."""
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE secretive LOGIN CREATEDB PASSWORD {}").format(sql.Literal(SECRET)))
        hba = server.data / "pg_hba.conf"
        hba.write_text("host all secretive 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def embedded_server(embedded: EmbeddedServer) -> ServerAddress:
    return embedded.address()


@pytest.fixture(scope="session")
def embedded_url(embedded_server: ServerAddress) -> str:
    return embedded_server.url()


@pytest.fixture
def clean_embedded(embedded_url: str) -> str:
    """The embedded server's URL, with nothing of ours left on it by an earlier test."""
    drop_ours(embedded_url)
    return embedded_url


@pytest.fixture(scope="session")
def system_url() -> Iterator[str]:
    """A CREATEDB, non-superuser role on the machine's server, with a password."""
    role = f"dbbranch_ci_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(SYSTEM_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"the PostgreSQL server at 127.0.0.1:5432 is not running ({exc}); "
            "start it (see .ci/run) or deselect with -m 'not system_server'"
        )
    with admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
    address = ServerAddress.parse(SYSTEM_ADMIN_URL)
    yield ServerAddress(
        host=address.host, port=address.port, user=role, password=SECRET, dbname="postgres"
    ).url()
    with psycopg.connect(SYSTEM_ADMIN_URL, autocommit=True) as admin:
        for (name,) in admin.execute(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s",
            (role,),
        ).fetchall():
            admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture(params=["embedded", pytest.param("system", marks=pytest.mark.system_server)])
def server_url(request: pytest.FixtureRequest) -> str:
    """Both paths: the embedded server in RAM, and an existing server by URL (non-superuser),
    with nothing of ours on it."""
    url: str = request.getfixturevalue("embedded_url" if request.param == "embedded" else "system_url")
    drop_ours(url)
    return url


@pytest.fixture
def alembic_project(tmp_path: Path) -> AlembicProject:
    """Two revisions: r1 creates ``widgets``, r2 adds ``size`` and one seed row. Suites use
    the pytester folder (see ``suites/conftest.py``)."""
    return AlembicProject(tmp_path / "project").add_widgets()


@pytest.fixture
def emulator(embedded_server: ServerAddress) -> Iterator[LakebaseEmulator]:
    """A Lakebase emulator with project ``demo``, whose production branch holds 50 customers."""
    create_database(
        embedded_server.url(),
        LAKEBASE_SOURCE,
        "CREATE TABLE customers (id int PRIMARY KEY, name text)",
        "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g",
    )
    emu = LakebaseEmulator(embedded_server, branch_limit=10, operation_delay=0.02)
    emu.start()
    emu.create_project(LAKEBASE_PROJECT, source_database=LAKEBASE_SOURCE)
    try:
        yield emu
    finally:
        emu.stop()
        drop_database(embedded_server.url(), LAKEBASE_SOURCE)


@pytest.fixture
def lakebase_env(
    emulator: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The environment a Lakebase-configured run needs, and only that: no developer profile,
    no DATABRICKS_* from outside. Returned for inner runs; set in this process too."""
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    env = {
        "DATABRICKS_HOST": emulator.url,
        "DATABRICKS_TOKEN": emulator.token,
        "DBBRANCH_LAKEBASE_PROJECT": LAKEBASE_PROJECT,
        "DBBRANCH_LAKEBASE_PORT": str(emulator.pg_port),
        "DBBRANCH_LAKEBASE_SSLMODE": "require",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
