"""Every configuration mistake a user will make, through the ``BranchManager`` a fixture uses:
one ``DbBranchError`` whose message names the setting, file or revision to fix (and where that
setting came from), never the password, and nothing of ours left on the server.

The server URL is the ``secretive`` role's, whose password is ``SECRET``, so every message is
searched for a password that really was configured.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import ConfigError, DbBranchError, MigrationError, ServerError, SourceError
from pytest_dbbranch.settings import Settings, resolve
from tests.helpers import SECRET, AlembicProject, databases


@dataclass
class Setup:
    """What a case may use: the widgets project's folder, an empty folder, the server."""

    root: Path
    project: AlembicProject
    bare: Path
    url: str
    server: ServerAddress
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def settings(
        self, options: dict[str, str] | None = None, *, root: Path | None = None, **kwargs: object
    ) -> Settings:
        """Settings as the plugin resolves them, so messages name the option, variable or ini
        value the user set."""
        return resolve(options={"url": self.url, **(options or {})}, root=root or self.root, **kwargs)  # type: ignore[arg-type]


def wrong_password(setup: Setup) -> Settings:
    server = setup.server
    wrong = ServerAddress(host=server.host, port=server.port, user="secretive", password="not-" + SECRET)
    return setup.settings({"url": wrong.url()})


def not_a_url(setup: Setup) -> Settings:
    return setup.settings({"url": "localhost:5432"})


def missing_alembic_ini(setup: Setup) -> Settings:
    return setup.settings({"alembic_ini": "conf/alembic.ini"})


def malformed_alembic_ini(setup: Setup) -> Settings:
    (setup.bare / "alembic.ini").write_text("this is not an ini file\n[[[")
    return setup.settings(root=setup.bare)


def two_heads(setup: Setup) -> Settings:
    setup.project.add("r3a", "r2", "SELECT 1")
    setup.project.add("r3b", "r2", "SELECT 2")
    return setup.settings()


def python_error_in_migration(setup: Setup) -> Settings:
    path = setup.project.add("r3", "r2")
    path.write_text(
        path.read_text().replace(
            "    pass\n\ndef downgrade", "    raise RuntimeError('boom')\n\ndef downgrade", 1
        )
    )
    return setup.settings()


def unknown_target_revision(setup: Setup) -> Settings:
    return setup.settings({"revision": "nope"})


def missing_source_database(setup: Setup) -> Settings:
    return setup.settings(env={"DBBRANCH_SOURCE": "prod_snapshot_missing"})


def missing_source_file(setup: Setup) -> Settings:
    return setup.settings(ini={"source": "dumps/prod.sql"})


def source_file_that_is_not_a_dump(setup: Setup) -> Settings:
    (setup.root / "prod.dump").write_bytes(bytes(range(256)) * 10)
    return setup.settings({"source": "prod.dump"})


def missing_script_directory(setup: Setup) -> Settings:
    (setup.bare / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/nowhere\n")
    return setup.settings(root=setup.bare)


def role_without_createdb(setup: Setup) -> Settings:
    admin = setup.server.conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS cannot_create")
        conn.execute("CREATE ROLE cannot_create LOGIN NOCREATEDB")

    def drop_role() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP ROLE cannot_create")

    setup.cleanups.append(drop_role)
    server = setup.server
    return setup.settings(
        {"url": ServerAddress(host=server.host, port=server.port, user="cannot_create").url()}
    )


CASES: list[tuple[Callable[[Setup], Settings], type[DbBranchError], list[str]]] = [
    (wrong_password, ServerError, ["password authentication failed", "check the user and password"]),
    (not_a_url, ConfigError, ["--dbbranch-url*'localhost:5432' is not a PostgreSQL URL"]),
    (
        missing_alembic_ini,
        ConfigError,
        ["--dbbranch-alembic-ini: Alembic config file {root}/conf/alembic.ini does not exist"],
    ),
    (malformed_alembic_ini, ConfigError, ["{bare}/alembic.ini: malformed alembic.ini"]),
    (two_heads, MigrationError, ["has 2 heads (r3a, r3b)*alembic merge heads"]),
    (
        python_error_in_migration,
        MigrationError,
        ["Alembic migration failed at revision r3", "RuntimeError: boom"],
    ),
    (unknown_target_revision, MigrationError, ["--dbbranch-revision: target revision 'nope' does not exist"]),
    (
        missing_source_database,
        SourceError,
        ["environment variable DBBRANCH_SOURCE: source database 'prod_snapshot_missing' does not exist"],
    ),
    (
        missing_source_file,
        SourceError,
        ["ini option dbbranch_source: the source dump file {root}/dumps/prod.sql does not exist"],
    ),
    (
        source_file_that_is_not_a_dump,
        SourceError,
        ["prod.dump is neither a plain SQL dump nor a pg_dump archive"],
    ),
    (missing_script_directory, ConfigError, ["{bare}/alembic.ini: script_location is not usable*nowhere"]),
    (role_without_createdb, ServerError, ["cannot create database*permission denied*needs CREATEDB"]),
]


@pytest.fixture
def setup(
    alembic_project: AlembicProject, tmp_path: Path, secret_url: str, embedded_server: ServerAddress
) -> Iterator[Setup]:
    bare = tmp_path / "bare"
    bare.mkdir()
    made = Setup(alembic_project.root, alembic_project, bare, secret_url, embedded_server)
    yield made
    for cleanup in made.cleanups:
        cleanup()


@pytest.mark.parametrize(
    ("make_settings", "error", "patterns"), CASES, ids=[case[0].__name__ for case in CASES]
)
def test_error_names_what_to_fix_and_leaves_nothing(
    setup: Setup,
    make_settings: Callable[[Setup], Settings],
    error: type[DbBranchError],
    patterns: list[str],
) -> None:
    """The message is all a CI log reader gets: it names the cause and its origin, hides the
    password, is the same for every test of the run, and nothing half-made stays behind."""
    settings = make_settings(setup)
    manager = BranchManager(settings, run_id=names.new_run_id())
    try:
        with pytest.raises(error) as failure:
            manager.create(node_id="t::test_a")
        with pytest.raises(error) as again:
            manager.create(node_id="t::test_b")
    finally:
        manager.close()
    message = str(failure.value)
    for pattern in patterns:
        expected = pattern.format(root=setup.root, bare=setup.bare)
        assert fnmatch.fnmatchcase(message, f"*{expected}*"), f"{expected!r} not in:\n{message}"
    assert SECRET not in message
    assert str(again.value) == message, "the second test of the run gets the same answer"
    assert {
        name for name, comment in databases(setup.url).items() if name.startswith("dbb") or comment
    } == set()
    assert setup.project.runs <= 1, "a failed build is not retried by the next test"
