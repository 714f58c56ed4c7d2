"""Every configuration mistake a user will make, through the ``BranchManager`` a fixture uses:
one ``DbBranchError`` whose message names the setting, file or revision to fix (and where that
setting came from), never the password, and nothing of ours left on the server.

The server URL is the ``secretive`` role's, whose password is ``SECRET``, so every message is
searched for a password that really was configured.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pytest_dbbranch.migrations.alembic as alembic_module
from pytest_dbbranch import names
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import (
    ConfigError,
    DbBranchError,
    EmbeddedServerError,
    MigrationError,
    ServerError,
    SourceError,
)
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


def broken_down_revision(setup: Setup) -> Settings:
    setup.project.add("r3", "r9999", "SELECT 1")
    return setup.settings()


def syntax_error_in_a_revision(setup: Setup) -> Settings:
    path = setup.project.add("r3", "r2", "SELECT 1")
    path.write_text(path.read_text().replace("def upgrade():", "def upgrade(:"))
    return setup.settings()


def source_is_the_urls_own_database(setup: Setup) -> Settings:
    address = ServerAddress.parse(setup.url)
    on_postgres = ServerAddress(
        host=address.host, port=address.port, user=address.user, password=address.password, dbname="postgres"
    )
    return setup.settings({"url": on_postgres.url(), "source": "postgres"})


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
        [
            "Alembic migration failed at revision r3",
            "file: {root}/migrations/versions/r3.py, line 9: raise RuntimeError('boom')",
            "RuntimeError: boom",
        ],
    ),
    (
        broken_down_revision,
        ConfigError,
        ["the Alembic history in {root}/migrations is broken: a down_revision names 'r9999', which no"],
    ),
    (
        syntax_error_in_a_revision,
        ConfigError,
        ["{root}/alembic.ini: {root}/migrations/versions/r3.py, line 8: "],
    ),
    (
        source_is_the_urls_own_database,
        SourceError,
        ["the source database 'postgres' is the one the server URL connects to*point the URL at another"],
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


# Alembic warns about the broken history before the plugin explains it.
pytestmark = pytest.mark.filterwarnings("ignore:Revision r9999 referenced from:UserWarning")


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


def refusal(setup: Setup) -> str:
    """The message a new run gets from the server of ``setup``."""
    manager = BranchManager(setup.settings(), run_id=names.new_run_id())
    try:
        with pytest.raises(ServerError) as failure:
            manager.create(node_id="t::test_a")
    finally:
        manager.close()
    return str(failure.value)


@contextlib.contextmanager
def every_slot_taken(server: ServerAddress) -> Iterator[list[psycopg.Connection[Any]]]:
    """Superuser sessions on ``server`` until it refuses more (``max_connections``)."""
    held: list[psycopg.Connection[Any]] = []

    def take_a_slot() -> bool:
        try:
            conn = psycopg.connect(server.conninfo(), autocommit=True)
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc)
            return False
        held.append(conn)
        return True

    try:
        with ThreadPoolExecutor(8) as pool:
            while all(pool.map(lambda _: take_a_slot(), range(8))):
                pass
        yield held
    finally:
        for conn in held:
            conn.close()


def test_no_free_connection_slot_is_named(setup: Setup, embedded_server: ServerAddress) -> None:
    """Every connection slot taken (``max_connections``; the last few are reserved for
    superusers): the message says so and what to do, instead of asking whether the server
    runs at all."""
    with every_slot_taken(embedded_server) as held:
        messages = [refusal(setup)]
        # One slot free, but reserved for superusers (once the closed session's backend has
        # gone: the server frees the slot when that process exits).
        held.pop().close()
        deadline = time.monotonic() + 10
        while "reserved for roles" not in messages[-1] and time.monotonic() < deadline:
            time.sleep(0.05)
            messages.append(refusal(setup))
    assert "too many clients already" in messages[0], messages[0]
    assert "reserved for roles with the SUPERUSER attribute" in messages[-1], messages[-1]
    for message in messages:
        assert "the server has no free connection slot (max_connections)" in message, message
        assert "run fewer xdist workers or concurrent runs, or raise max_connections" in message
        assert "is the server running" not in message
        assert SECRET not in message


def test_no_free_connection_slot_while_migrating_is_not_blamed_on_the_migration(
    setup: Setup, embedded_server: ServerAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slots run out between the fork and Alembic's own connection (the review's second
    message for this input: "Alembic migration failed ... -> fix that migration")."""
    run = alembic_module.run
    slots = contextlib.ExitStack()

    def run_with_every_slot_taken(*args: Any, **kwargs: Any) -> Any:
        slots.enter_context(every_slot_taken(embedded_server))
        return run(*args, **kwargs)

    monkeypatch.setattr(alembic_module, "run", run_with_every_slot_taken)
    manager = BranchManager(setup.settings(), run_id=names.new_run_id())
    try:
        with slots, pytest.raises(DbBranchError) as failure:
            manager.create(node_id="t::test_a")
    finally:
        manager.close()
    message = str(failure.value)
    assert "too many clients already" in message, message
    assert "the server has no free connection slot (max_connections)" in message, message
    assert "fix that migration" not in message, message
    assert SECRET not in message


def test_an_unusable_embedded_dir_is_named(setup: Setup) -> None:
    """``dbbranch_embedded_dir`` is a file: the manager (without the plugin's check before the
    tests) says which folder it cannot use and which setting to change."""
    taken = setup.bare / "taken"
    taken.write_text("")
    settings = resolve(env={"DBBRANCH_EMBEDDED_DIR": str(taken)}, root=setup.root)
    manager = BranchManager(settings, run_id=names.new_run_id())
    try:
        with pytest.raises(EmbeddedServerError) as failure:
            manager.create(node_id="t::test_a")
    finally:
        manager.close()
    message = str(failure.value)
    assert message.startswith(f"the embedded server cannot use {taken}/pg"), message
    assert "Not a directory; set dbbranch_embedded_dir to a folder you can write" in message


@pytest.mark.system_server
def test_clone_strategy_needs_postgresql_18(
    make_manager: Callable[..., BranchManager], system_url: str
) -> None:
    """``file_copy_method = clone`` exists from PostgreSQL 18: on the machine's 15 the run
    says so instead of silently copying files."""
    manager = make_manager(url=system_url, strategy="clone")
    with pytest.raises(ConfigError) as failure:
        manager.create(node_id="t::test_a")
    message = str(failure.value)
    assert message.startswith("dbbranch_strategy clone needs PostgreSQL 18 or newer"), message
    assert "this server is PostgreSQL 15: use auto or file_copy" in message
