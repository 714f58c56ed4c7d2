"""``migrations.sql_folder`` against PostgreSQL: a folder of Flyway-named SQL files applied in
version order, with Flyway's history table, validation, transactions, errors and undo."""

from __future__ import annotations

import dataclasses
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import MigrationError
from pytest_dbbranch.migrations.flyway_rules import HISTORY_TABLE
from pytest_dbbranch.migrations.sql_folder import SqlFolderMigrator, load_sql_folder
from pytest_dbbranch.progress import Progress
from tests.helpers import SECRET, create_database, drop_database

WHERE = "ini option dbbranch_migrations"
#: What Flyway itself creates (its DDL for PostgreSQL), for a source Flyway migrated.
FLYWAY_TABLE = """
CREATE TABLE flyway_schema_history (
    installed_rank INT NOT NULL, version VARCHAR(50), description VARCHAR(200) NOT NULL,
    type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INTEGER,
    installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(),
    execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL);
ALTER TABLE flyway_schema_history ADD CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank)
"""


@pytest.fixture
def branch(clean_embedded: str) -> Iterator[ServerAddress]:
    """An empty database to migrate."""
    name = f"sqlfolder_{uuid.uuid4().hex[:8]}"
    create_database(clean_embedded, name)
    yield dataclasses.replace(ServerAddress.parse(clean_embedded), dbname=name)
    drop_database(clean_embedded, name)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "db" / "migration"
    made.mkdir(parents=True)
    return made


def write(folder: Path, files: dict[str, str]) -> SqlFolderMigrator:
    """Write (or overwrite) files, then load the folder as a new run would."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return load_sql_folder(folder, WHERE)


def query(address: ServerAddress, text: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        return conn.execute(text).fetchall()


def run(address: ServerAddress, *statements: str) -> None:
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def columns(address: ServerAddress, name: str) -> int:
    found = query(address, f"SELECT count(*) FROM information_schema.columns WHERE column_name = '{name}'")
    return int(found[0][0])


def history(address: ServerAddress) -> list[tuple[Any, ...]]:
    return query(
        address,
        f"SELECT installed_rank, version, description, type, script, checksum, success FROM {HISTORY_TABLE}"
        " ORDER BY installed_rank",
    )


def flyway_checksum(text: str) -> int:
    """An independent reading of Flyway's checksum: CRC-32 fed line by line, signed."""
    crc = 0
    for line in text.splitlines():
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return crc - 2**32 if crc >= 2**31 else crc


def failure(call: Any, *args: Any) -> MigrationError:
    with pytest.raises(MigrationError) as caught:
        call(*args)
    return caught.value


LOG = "CREATE TABLE log (id serial PRIMARY KEY, step text NOT NULL);\n"


def test_versions_apply_in_numeric_order_with_flyways_history(branch: ServerAddress, folder: Path) -> None:
    """V1_10 runs after V1_9; each file gets a history row Flyway would write (checksum over its
    lines, script relative to the folder, subfolders included); progress names each step."""
    texts = {
        "V1__create_log.sql": LOG + "COPY log (step) FROM stdin;\nfrom copy\n\\.\n",
        "V1_10__ten.sql": "INSERT INTO log (step) VALUES ('1.10');\r\n",
        "V1_9__nine.sql": "INSERT INTO log (step)\n  VALUES ('1.9');\n",
        "later/V2__placeholders.sql": "COMMENT ON TABLE log IS '${flyway:user}@${flyway:database}';\n",
    }
    migrator = write(folder, texts)
    lines: list[str] = []
    migrator.upgrade(branch, "head", progress=Progress(lambda text, end: lines.append(text)))
    assert query(branch, "SELECT step FROM log ORDER BY id") == [("from copy",), ("1.9",), ("1.10",)]
    assert query(branch, "SELECT obj_description('log'::regclass)") == [(f"{branch.user}@{branch.dbname}",)]
    files = ["V1__create_log.sql", "V1_9__nine.sql", "V1_10__ten.sql", "later/V2__placeholders.sql"]
    assert history(branch) == [
        (1, "1", "create log", "SQL", files[0], flyway_checksum(texts[files[0]]), True),
        (2, "1.9", "nine", "SQL", files[1], flyway_checksum(texts[files[1]]), True),
        (3, "1.10", "ten", "SQL", files[2], flyway_checksum(texts[files[2]]), True),
        (4, "2", "placeholders", "SQL", files[3], flyway_checksum(texts[files[3]]), True),
    ]
    assert query(branch, f"SELECT DISTINCT installed_by = current_user FROM {HISTORY_TABLE}") == [(True,)]
    assert lines[0] == "pytest-dbbranch: migrating to head: V1 create log (1 of 4) ... "
    assert lines[6] == "pytest-dbbranch: migrating to head: V2 placeholders (4 of 4) ... "
    assert migrator.applied(branch) == ("1", "1.9", "1.10", "2")
    migrator.upgrade(branch, "head")
    assert len(history(branch)) == 4, "nothing is pending the second time"


def test_target_version_stops_there(branch: ServerAddress, folder: Path) -> None:
    migrator = write(folder, {"V1__log.sql": LOG, "V2__a.sql": "SELECT 2;", "V3__b.sql": "SELECT 3;"})
    assert migrator.applied(branch) == (), "no history table yet"
    migrator.upgrade(branch, "2")
    assert migrator.applied(branch) == ("1", "2")
    with pytest.raises(MigrationError, match="target version '7' does not exist"):
        migrator.upgrade(branch, "7")
    migrator.upgrade(branch, "head")
    assert migrator.applied(branch) == ("1", "2", "3")


def test_repeatable_runs_after_versions_and_again_when_changed(branch: ServerAddress, folder: Path) -> None:
    view = "CREATE OR REPLACE VIEW steps AS SELECT step FROM log;\n"
    migrator = write(folder, {"R__steps_view.sql": view, "V1__log.sql": LOG})
    migrator.upgrade(branch, "head")
    migrator.upgrade(branch, "head")
    rows = history(branch)
    assert [(r[1], r[2], r[5]) for r in rows] == [
        ("1", "log", rows[0][5]),
        (None, "steps view", flyway_checksum(view)),
    ]
    changed = "CREATE OR REPLACE VIEW steps AS SELECT step, id FROM log;\n"
    write(folder, {"R__steps_view.sql": changed}).upgrade(branch, "head")
    assert [(r[0], r[1], r[5]) for r in history(branch)][2:] == [(3, None, flyway_checksum(changed))]
    assert columns(branch, "id") == 2, "the view has an id column now"


def test_continues_the_history_of_a_source_flyway_migrated(branch: ServerAddress, folder: Path) -> None:
    """A baseline row and a row written with version 2.0 for V2: only V3 runs, at rank 3."""
    v2 = "CREATE TABLE two (a int);\n"
    migrator = write(
        folder,
        {
            "V1__never_run.sql": "SELECT 1 / 0;",
            "V2__two.sql": v2,
            "V3__three.sql": "ALTER TABLE two ADD b int;",
        },
    )
    baseline = "'<< Flyway Baseline >>'"
    run(
        branch,
        FLYWAY_TABLE,
        v2,
        "INSERT INTO flyway_schema_history VALUES"
        f" (1, '1', {baseline}, 'BASELINE', {baseline}, NULL, 'ops', now(), 0, true),"
        f" (2, '2.0', 'two', 'SQL', 'V2__two.sql', {flyway_checksum(v2)}, 'ops', now(), 12, true)",
    )
    assert migrator.applied(branch) == ("1", "2")
    assert [r.id for r in migrator.pending(migrator.applied(branch), "head")] == ["3"]
    migrator.upgrade(branch, "head")
    assert [(r[0], r[1], r[3]) for r in history(branch)] == [
        (1, "1", "BASELINE"),
        (2, "2.0", "SQL"),
        (3, "3", "SQL"),
    ]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("changed", "V1__log.sql: changed after it was applied to the source (checksum"),
        ("deleted", "version 2 (V2__a.sql) is recorded as applied to the source, but no file in"),
        ("out of order", "V1_5__late.sql: version 1.5 is pending below 2, the newest version applied"),
        ("failed row", "V3__b.sql failed when it was applied (installed_rank 3, success = false)"),
    ],
)
def test_validation_stops_before_anything_runs(
    branch: ServerAddress, folder: Path, tamper: str, expected: str
) -> None:
    write(folder, {"V1__log.sql": LOG, "V2__a.sql": "SELECT 2;"}).upgrade(branch, "head")
    if tamper == "changed":
        (folder / "V1__log.sql").write_text(LOG.replace("step text", "step varchar"))
    elif tamper == "deleted":
        (folder / "V2__a.sql").unlink()
    elif tamper == "out of order":
        (folder / "V1_5__late.sql").write_text("SELECT 15;")
    else:
        failed_row = "(3, '3', 'b', 'SQL', 'V3__b.sql', 0, 'x', now(), 0, false)"
        run(branch, f"INSERT INTO {HISTORY_TABLE} VALUES {failed_row}")
    (folder / "V9__pending.sql").write_text("CREATE TABLE must_not_exist (a int);")
    migrator = load_sql_folder(folder, WHERE)
    error = failure(migrator.upgrade, branch, "head")
    assert str(error).startswith(f"the SQL migrations in {folder} do not match the source's history")
    assert expected in str(error)
    if tamper in ("changed", "out of order"):
        assert error.location is not None and error.location[0].endswith(expected.split(":")[0])
    assert query(branch, "SELECT to_regclass('must_not_exist') IS NULL") == [(True,)]


def test_failing_statement_names_file_line_statement_and_error(secret_url: str, folder: Path) -> None:
    """The statement and line come from the server's error position; nothing of the failed file
    stays (one transaction with its history row); the password appears nowhere."""
    name = f"sqlfolder_{uuid.uuid4().hex[:8]}"
    create_database(secret_url, name)
    branch = dataclasses.replace(ServerAddress.parse(secret_url), dbname=name)
    try:
        migrator = write(
            folder,
            {
                "V1__log.sql": LOG,
                "V2__bad.sql": (
                    "-- adds a column, then fills it\n"
                    "ALTER TABLE log ADD code text;\n"
                    "\n"
                    "UPDATE log\n"
                    "   SET code = nme\n"
                    " WHERE id > 0;\n"
                ),
            },
        )
        error = failure(migrator.upgrade, branch, "head")
        lines = str(error).splitlines()
        assert lines[0] == "SQL migration failed at V2 bad (upgrading a branch to 'head')."
        assert lines[1] == f"  file: {folder / 'V2__bad.sql'}, line 5"
        assert lines[2] == "  statement: UPDATE log SET code = nme WHERE id > 0;"
        assert lines[3] == '  error: UndefinedColumn: column "nme" does not exist'
        assert lines[-1] == "  -> fix that migration."
        assert error.location == (str(folder / "V2__bad.sql"), 5)
        assert SECRET not in str(error)
        assert [r[1] for r in history(branch)] == ["1"]
        assert columns(branch, "code") == 0
    finally:
        drop_database(secret_url, name)


def test_scripts_outside_a_transaction(branch: ServerAddress, folder: Path) -> None:
    """CREATE INDEX CONCURRENTLY runs: found by itself, or opted out by comment or .sql.conf;
    a failure there leaves a failed row, as Flyway leaves one."""
    migrator = write(
        folder,
        {
            "V1__log.sql": LOG,
            "V2__index.sql": "CREATE INDEX CONCURRENTLY log_step ON log (step);",
            "V3__more.sql": "-- dbbranch: no-transaction\nALTER TABLE log ADD code text;\n"
            "CREATE INDEX CONCURRENTLY log_code ON log (code);\n",
            "V4__conf.sql": "CREATE UNIQUE INDEX CONCURRENTLY log_id ON log (id);\nVACUUM log;\n",
            "V4__conf.sql.conf": "executeInTransaction=false\n",
        },
    )
    migrator.upgrade(branch, "head")
    valid = "SELECT indexrelid::regclass::text, indisvalid FROM pg_index WHERE indrelid = 'log'::regclass"
    assert sorted(query(branch, valid)) == [
        ("log_code", True),
        ("log_id", True),
        ("log_pkey", True),
        ("log_step", True),
    ]
    assert [r[1] for r in history(branch)] == ["1", "2", "3", "4"]
    write(folder, {"V5__broken.sql": "CREATE INDEX CONCURRENTLY log_nope ON log (nope);"})
    error = failure(load_sql_folder(folder, WHERE).upgrade, branch, "head")
    assert "outside a transaction" in str(error)
    assert [(r[1], r[6]) for r in history(branch)][-1] == ("5", False), "Flyway's failed row"


def test_undo_migrations_take_versions_back(branch: ServerAddress, folder: Path) -> None:
    migrator = write(
        folder,
        {
            "V1__log.sql": LOG,
            "U1__log.sql": "DROP TABLE log;",
            "V2__code.sql": "ALTER TABLE log ADD code text;",
            "U2__code.sql": "ALTER TABLE log DROP code;",
        },
    )
    assert migrator.can_downgrade and [r.has_downgrade for r in migrator.revisions()] == [True, True]
    migrator.upgrade(branch, "head")
    migrator.downgrade(branch, "1")
    assert migrator.applied(branch) == ("1",)
    assert [(r[1], r[3], r[4]) for r in history(branch)][-1] == ("2", "UNDO_SQL", "U2__code.sql")
    migrator.upgrade(branch, "head")
    assert columns(branch, "code") == 1
    migrator.downgrade(branch, "base")
    assert migrator.applied(branch) == ()
    assert query(branch, "SELECT to_regclass('log') IS NULL") == [(True,)]

    without = write(folder, {"V3__no_undo.sql": "SELECT 3;"})
    without.upgrade(branch, "head")
    error = failure(without.downgrade, branch, "1")
    assert "no undo migration (U<version>__<description>.sql) for V3__no_undo.sql" in str(error)
    assert without.applied(branch) == ("1", "2", "3"), "nothing was undone"


def test_a_migration_that_rewrites_the_history_is_caught(branch: ServerAddress, folder: Path) -> None:
    migrator = write(folder, {"V1__log.sql": LOG, "V2__oops.sql": f"DELETE FROM {HISTORY_TABLE};"})
    error = failure(migrator.upgrade, branch, "head")
    assert "does not record version(s) 1 as applied" in str(error)


def test_a_history_in_another_schema_is_not_started_over(branch: ServerAddress, folder: Path) -> None:
    """Flyway configured with schemas=app keeps its table there: a second history in public
    would run every migration again."""
    run(branch, "CREATE SCHEMA app", "CREATE TABLE app.flyway_schema_history (installed_rank int)")
    migrator = write(folder, {"V1__log.sql": LOG})
    error = failure(migrator.upgrade, branch, "head")
    assert f"the source keeps {HISTORY_TABLE} in the schema app, not in public" in str(error)
    run(branch, "ALTER TABLE app.flyway_schema_history RENAME TO elsewhere")
    migrator.upgrade(branch, "head")
    assert [r[1] for r in history(branch)] == ["1"]
