"""Shared test infrastructure: real PostgreSQL servers and inner pytest projects.

The bulk of the suite runs inner test suites (through ``pytester``) against an embedded
server in RAM that this session starts with the plugin's own ``EmbeddedServer``; tests marked
``system_server`` run against the machine's PostgreSQL at 127.0.0.1:5432 as a role that has
CREATEDB but is not a superuser (the "existing server by URL" path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.server.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "inventory"
SYSTEM_ADMIN_URL = os.environ.get("DBBRANCH_TEST_SYSTEM_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "s3cr3t-Pa55-" + uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's DBBRANCH_* variables must not change what the tests see."""
    for key in list(os.environ):
        if key.startswith("DBBRANCH_") and key != "DBBRANCH_TEST_SYSTEM_URL":
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """This session's own server in RAM, started with the plugin's EmbeddedServer."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path_factory.getbasetemp()
    folder = base / f"dbbranch-tests-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        server = EmbeddedServer(folder)
        address = server.acquire("tests")
        _add_password_role(server, address)
        server.base_folder = folder  # type: ignore[attr-defined]
        yield server
        server.release("tests")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_server(embedded: EmbeddedServer) -> ServerAddress:
    return embedded.address()


def _add_password_role(server: EmbeddedServer, address: ServerAddress) -> None:
    """A role that must give a password, so 'wrong password' is a real server answer."""
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE secretive LOGIN CREATEDB PASSWORD {}").format(sql.Literal(SECRET)))
        hba = server.data / "pg_hba.conf"
        hba.write_text("host all secretive 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def embedded_url(embedded_server: ServerAddress) -> str:
    return embedded_server.url()


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


def databases(url: str) -> dict[str, str | None]:
    """Databases the connecting role owns, with their comment (our tag, if any).

    Limited to the role's own, so a shared server's other users are never touched.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE pg_get_userbyid(datdba) = current_user"
        ).fetchall()
    return {name: comment for name, comment in rows}


def our_branches(url: str, kind: str = "branch") -> list[str]:
    return sorted(
        name
        for name, comment in databases(url).items()
        if comment and '"tool":"pytest-dbbranch"' in comment and f'"kind":"{kind}"' in comment
    )


def drop_ours(url: str) -> None:
    """Leave the shared server clean between tests: drop only what carries our tag."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name, comment in databases(url).items():
            if comment and '"tool":"pytest-dbbranch"' in comment:
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))


ENV_PY = """
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
with open(os.path.join(os.path.dirname(__file__), "..", "alembic_runs.log"), "a") as log:
    log.write(f"{os.getpid()}\\n")

connectable = config.attributes.get("connection")
if connectable is None:
    engine = engine_from_config(config.get_section(config.config_ini_section),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connectable, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
from alembic import op
revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
{body}

def downgrade():
{down_body}
"""


class AlembicProject:
    """A throwaway Alembic project inside a pytester folder; counts its own runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        (root / "migrations" / "env.py").write_text(ENV_PY)
        (root / "migrations" / "script.py.mako").write_text("# unused\n")
        (root / "alembic.ini").write_text(
            "[alembic]\nscript_location = %(here)s/migrations\n"
            "sqlalchemy.url = postgresql+psycopg://nowhere/none\n"
        )

    def add(self, revision: str, down: str | None, *statements: str, undo: tuple[str, ...] = ()) -> Path:
        """A revision running ``statements``; ``undo`` are its downgrade's (none: ``pass``)."""
        body = "\n".join(f"    op.execute({s!r})" for s in statements) or "    pass"
        down_body = "\n".join(f"    op.execute({s!r})" for s in undo) or "    pass"
        path = self.versions / f"{revision}.py"
        path.write_text(REVISION.format(revision=revision, down=down, body=body, down_body=down_body))
        return path

    @property
    def runs(self) -> int:
        log = self.root / "alembic_runs.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(params=["embedded", pytest.param("system", marks=pytest.mark.system_server)])
def server_url(request: pytest.FixtureRequest) -> str:
    """Both paths: the embedded server in RAM, and an existing server by URL (non-superuser)."""
    url: str = request.getfixturevalue("embedded_url" if request.param == "embedded" else "system_url")
    drop_ours(url)
    return url


@pytest.fixture
def alembic_project(pytester: pytest.Pytester) -> AlembicProject:
    project = AlembicProject(pytester.path)
    project.add(
        "r1",
        None,
        "CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL)",
        undo=("DROP TABLE widgets",),
    )
    project.add(
        "r2",
        "r1",
        "ALTER TABLE widgets ADD COLUMN size int NOT NULL DEFAULT 1",
        "INSERT INTO widgets (name) VALUES ('seed')",
        undo=("DELETE FROM widgets WHERE name = 'seed'", "ALTER TABLE widgets DROP COLUMN size"),
    )
    return project


def run_inner(pytester: pytest.Pytester, url: str | None, *args: str, **env: str) -> Any:
    """Run an inner suite in a subprocess, the way a user's CI runs pytest."""
    argv = ["-p", "no:cacheprovider", *args]
    if url is not None:
        argv += ["--dbbranch-url", url]
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return pytester.runpytest_subprocess(*argv, timeout=300)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_tests(pytester: pytest.Pytester, name: str, body: str) -> Path:
    return pytester.makepyfile(**{name: textwrap.dedent(body)})


def pg_dump(url: str, dbname: str, *args: str) -> bytes:
    """Schema and data of a database, for before/after comparisons."""
    from pytest_dbbranch.server.binaries import client

    address = ServerAddress.parse(url)
    env = dict(os.environ, PGPASSWORD=address.password or "")
    argv = [
        client("pg_dump"),
        "-h",
        address.host or "",
        "-p",
        str(address.port or 5432),
        "-U",
        address.user or "postgres",
        "--no-comments",
        *args,
        dbname,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, check=True).stdout
    if any(arg.startswith("-F") for arg in args):
        return out
    # PostgreSQL 18's pg_dump writes a random \restrict key into plain dumps.
    return b"\n".join(
        line for line in out.splitlines() if not line.startswith((b"\\restrict", b"\\unrestrict"))
    )


def copy_example(pytester: pytest.Pytester) -> None:
    """The example application, as a user's project folder."""
    for entry in EXAMPLE.iterdir():
        if entry.name in ("__pycache__", ".pytest_cache"):
            continue
        target = pytester.path / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(entry, target)


def restore_snapshot(address: ServerAddress, dbname: str) -> None:
    """A fresh database ``dbname`` holding the example's production snapshot."""
    from pytest_dbbranch.server.binaries import client

    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    argv = [client("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(EXAMPLE / "snapshot.sql")]
    subprocess.run([*argv, address.conninfo(dbname)], check=True, capture_output=True)
