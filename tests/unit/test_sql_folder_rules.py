"""``migrations.flyway_rules`` and loading a ``sql:FOLDER``: Flyway's rules for names,
versions, checksums, script configuration, statements and its history table, without a server."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest

from pytest_dbbranch.errors import ConfigError, MigrationError
from pytest_dbbranch.migrations.flyway_rules import (
    BadName,
    History,
    Row,
    Version,
    checksum,
    history_problems,
    needs_no_transaction,
    parse_name,
    parse_script_config,
    split_statements,
)
from pytest_dbbranch.migrations.sql_folder import load_sql_folder

WHERE = "ini option dbbranch_migrations"


def folder_with(root: Path, files: dict[str, str]) -> Path:
    folder = root / "sql"
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def refusal(root: Path, files: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as failure:
        load_sql_folder(folder_with(root, files), WHERE)
    return str(failure.value)


# -- names and versions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kind", "version", "description"),
    [
        ("V1__init.sql", "V", "1", "init"),
        ("V1_1__add_orders.sql", "V", "1.1", "add orders"),
        ("V2.0.1__x.SQL", "V", "2.0.1", "x"),
        ("V001__padded.sql", "V", "001", "padded"),
        ("U3__drop_it.sql", "U", "3", "drop it"),
        ("R__views.sql", "R", None, "views"),
        ("V1__a__b.sql", "V", "1", "a  b"),
    ],
)
def test_migration_names(filename: str, kind: str, version: str | None, description: str) -> None:
    name = parse_name(filename)
    assert name is not None
    assert (name.kind, name.version.text if name.version else None, name.description) == (
        kind,
        version,
        description,
    )


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("V1_init.sql", "no '__'"),
        ("v1__init.sql", "upper-case letter 'V'"),
        ("V1__.sql", "description after '__' is empty"),
        ("V1.a__x.sql", "'1.a' is not a version"),
        ("R1__views.sql", "with no version"),
        ("R__.sql", "is empty"),
        ("Views.sql", "no '__'"),
        ("1__init.sql", "starts with 'V'"),
        ("X1__init.sql", "does not start with V"),
        ("afterMigrate.sql", "Flyway callback"),
        ("beforeEachMigrate__log.sql", "Flyway callback"),
    ],
)
def test_mistaken_names_are_refused(filename: str, reason: str) -> None:
    with pytest.raises(BadName, match=re.escape(reason)):
        parse_name(filename)


@pytest.mark.parametrize("filename", ["seed_data.sql", "README.md", "notes.txt", "schema.sql"])
def test_other_files_are_not_migrations(filename: str) -> None:
    assert parse_name(filename) is None


def test_versions_compare_as_numbers_part_by_part() -> None:
    def v(text: str) -> Version:
        version = Version.parse(text)
        assert version is not None
        return version

    assert v("1.10") > v("1.9")
    assert v("1_10") == v("1.10")
    assert v("001") == v("1")
    assert v("1.0") == v("1")
    assert v("1.0.1") > v("1")
    assert sorted([v("2"), v("1.10"), v("1.9"), v("1.1")]) == [v("1.1"), v("1.9"), v("1.10"), v("2")]
    assert v("1_10").text == "1.10"
    assert Version.parse("1..2") is None and Version.parse("") is None


# -- checksum -----------------------------------------------------------------------------------

#: The V3__Couple.sql of Flyway's "Dry Runs" tutorial and the checksum its dry-run output shows
#: Flyway writing to the history table (lines 2-4 end with a space).
COUPLE = (
    "create table COUPLE (\n"
    "    ID int not null,\n"
    "    PERSON1 int not null references PERSON(ID), \n"
    "    PERSON2 int not null references PERSON(ID) \n"
    ");\n"
)


def test_checksum_matches_a_value_flyway_wrote() -> None:
    assert checksum(COUPLE) == -722651034


def test_checksum_ignores_line_endings_and_a_byte_order_mark() -> None:
    assert checksum(COUPLE.replace("\n", "\r\n")) == checksum(COUPLE)
    assert checksum(COUPLE.replace("\n", "\r")) == checksum(COUPLE)
    assert checksum("\ufeff" + COUPLE) == checksum(COUPLE)
    assert checksum(COUPLE + "\n\n") == checksum(COUPLE)
    assert checksum(COUPLE.replace("ID int", "ID  int")) != checksum(COUPLE)
    lines = "select 1;\nselect 'é';\n".splitlines()
    crc = 0
    for line in lines:
        crc = zlib.crc32(line.encode(), crc)
    assert checksum("select 1;\nselect 'é';\n") == (crc - 2**32 if crc >= 2**31 else crc)


# -- statements and transactions ----------------------------------------------------------------


def test_statements_split_outside_quotes_comments_and_function_bodies() -> None:
    text = (
        "-- leading comment; not a statement\n"
        "CREATE TABLE t (a text DEFAULT 'x;y', \"b;c\" int);\n"
        "/* a /* nested; */ comment; */ INSERT INTO t VALUES (E'it\\'s; fine', 1);\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;\n"
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "CREATE FUNCTION g(x int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT 2; END;\n"
        "SELECT $1 ; SELECT 'a''b;'\n"
    )
    statements = split_statements(text)
    assert [s.sql.split()[0] for s in statements] == [
        "CREATE",
        "INSERT",
        "CREATE",
        "DO",
        "CREATE",
        "SELECT",
        "SELECT",
    ]
    assert [s.line for s in statements] == [2, 3, 4, 5, 6, 8, 8]
    assert statements[1].sql == "INSERT INTO t VALUES (E'it\\'s; fine', 1);"
    assert statements[4].sql.endswith("SELECT 2; END;")
    assert statements[-1].sql == "SELECT 'a''b;'"


def test_a_byte_order_mark_is_not_part_of_the_first_statement(tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "V1__bom.sql").write_bytes("\ufeffCREATE TABLE t (a int);\n".encode())
    script = load_sql_folder(tmp_path / "sql", WHERE).versioned[Version((1,), "1")]
    assert [s.sql for s in script.statements] == ["CREATE TABLE t (a int);"]
    assert script.checksum == checksum("CREATE TABLE t (a int);")


def test_copy_from_stdin_carries_its_rows() -> None:
    text = "COPY t (a, b) FROM stdin;\n1\tx;y\n2\tz\n\\.\nSELECT 1;\n"
    copy, select = split_statements(text)
    assert copy.copy_data == "1\tx;y\n2\tz\n"
    assert (select.sql, select.line) == ("SELECT 1;", 5)


@pytest.mark.parametrize(
    ("sql", "outside"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (a);", True),
        ("create unique index concurrently i on t (a);", True),
        ("DROP INDEX CONCURRENTLY i;", True),
        ("VACUUM t;", True),
        ("REINDEX INDEX CONCURRENTLY i;", True),
        ("CREATE INDEX i ON t (a);", False),
        ("ALTER TYPE mood ADD VALUE 'meh';", False),
    ],
)
def test_statements_postgresql_refuses_in_a_transaction(sql: str, outside: bool) -> None:
    assert needs_no_transaction(split_statements(sql)[0]) is outside


def test_script_configuration() -> None:
    config = parse_script_config("# comment\nexecuteInTransaction=false\nencoding = latin-1\n")
    assert (config.execute_in_transaction, config.encoding, config.placeholder_replacement) == (
        False,
        "latin-1",
        True,
    )
    with pytest.raises(ValueError, match="unknown setting 'mixed'"):
        parse_script_config("mixed=true")
    with pytest.raises(ValueError, match="true or false"):
        parse_script_config("executeInTransaction=no")
    with pytest.raises(ValueError, match="shouldExecute"):
        parse_script_config("shouldExecute=true")


# -- loading a folder ---------------------------------------------------------------------------


def test_folder_is_read_recursively_in_version_order(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        {
            "V1_9__nine.sql": "SELECT 9;",
            "V1_10__ten.sql": "SELECT 10;",
            "sub/V2__two.sql": "SELECT 2;",
            "U2__two.sql": "SELECT -2;",
            "R__views.sql": "SELECT 0;",
            "V1_10__ten.sql.conf": "executeInTransaction=true\n",
            "seed.sql": "SELECT 'not a migration';",
        },
    )
    migrator = load_sql_folder(folder, WHERE)
    revisions = migrator.revisions()
    assert [(r.id, r.title, r.down, r.has_downgrade) for r in revisions] == [
        ("1.9", "nine", (), False),
        ("1.10", "ten", ("1.9",), False),
        ("2", "two", ("1.10",), True),
    ]
    assert revisions[2].path == folder / "sub" / "V2__two.sql"
    assert migrator.heads() == ["2"]
    assert migrator.lineage() == ("V1_9__nine.sql",)
    assert migrator.can_downgrade
    assert [name for name, _ in migrator.files()] == [
        "sql/R__views.sql",
        "sql/U2__two.sql",
        "sql/V1_10__ten.sql",
        "sql/V1_10__ten.sql.conf",
        "sql/V1_9__nine.sql",
        "sql/seed.sql",
        "sql/sub/V2__two.sql",
    ]
    assert migrator.settings_text() == [("folder", "sql")]
    assert migrator.resolve("head", WHERE) == ("2",)
    assert migrator.resolve("1_10", WHERE) == ("1.10",)
    assert migrator.resolve("base", WHERE) == ()
    assert [r.id for r in migrator.pending(("1.9",), "head")] == ["1.10", "2"]
    assert [r.id for r in migrator.pending((), "1.10")] == ["1.9", "1.10"]
    with pytest.raises(MigrationError, match=r"--dbbranch-revision: target version '3' does not exist"):
        migrator.resolve("3", "--dbbranch-revision")


def test_mistaken_names_stop_the_load_naming_each_file(tmp_path: Path) -> None:
    message = refusal(
        tmp_path,
        {"V1__ok.sql": "SELECT 1;", "V2_oops.sql": "SELECT 2;", "nested/v3__lower.sql": "SELECT 3;"},
    )
    assert message.startswith(f"{WHERE}: the SQL migrations in {tmp_path / 'sql'}:")
    assert f"{tmp_path / 'sql' / 'V2_oops.sql'}: not a migration name Flyway runs: no '__'" in message
    assert f"{tmp_path / 'sql' / 'nested' / 'v3__lower.sql'}: not a migration name" in message


def test_duplicate_versions_name_both_files(tmp_path: Path) -> None:
    message = refusal(tmp_path, {"V1_1__a.sql": "SELECT 1;", "V1.1.0__b.sql": "SELECT 2;"})
    assert "V1.1.0__b.sql and " in message and "V1_1__a.sql: two migrations with version 1" in message


def test_other_folder_problems_are_refused(tmp_path: Path) -> None:
    assert "does not exist" in refusal(tmp_path / "missing", {})
    assert "undoes version 2, which no versioned migration defines" in refusal(
        tmp_path / "a", {"V1__a.sql": "SELECT 1;", "U2__b.sql": "SELECT 1;"}
    )
    assert "none of its .sql files is named as a migration" in refusal(tmp_path / "b", {"schema.sql": ""})
    assert "configures V9__x.sql, which does not exist" in refusal(
        tmp_path / "c", {"V1__a.sql": "SELECT 1;", "V9__x.sql.conf": "executeInTransaction=false"}
    )
    mixed = refusal(
        tmp_path / "d", {"V1__a.sql": "CREATE TABLE t (a int);\nCREATE INDEX CONCURRENTLY i ON t (a);\n"}
    )
    assert "line 2: CREATE INDEX CONCURRENTLY I ON T (A) cannot run inside a transaction" in mixed
    control = refusal(tmp_path / "e", {"V1__a.sql": "BEGIN;\nCREATE TABLE t (a int);\nCOMMIT;\n"})
    assert "line 1: BEGIN would end the transaction" in control
    placeholder = refusal(tmp_path / "f", {"V1__a.sql": "SELECT 1;\nGRANT ALL ON t TO ${app_role};\n"})
    assert "line 2: placeholder ${app_role}: only Flyway's built-in placeholders" in placeholder


def test_no_transaction_opt_outs(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        {
            "V1__a.sql": "-- dbbranch: no-transaction\nCREATE TABLE t (a int);\nVACUUM t;",
            "V2__b.sql": "CREATE INDEX CONCURRENTLY j ON t (a);",
            "V3__c.sql": "BEGIN;\nCOMMIT;\n",
            "V3__c.sql.conf": "executeInTransaction=false",
            "V4__d.sql": "SELECT '${not_a_placeholder}';",
            "V4__d.sql.conf": "placeholderReplacement=false",
        },
    )
    scripts = load_sql_folder(folder, WHERE).versioned
    assert [script.transactional for script in scripts.values()] == [False, False, False, True]


# -- the history table --------------------------------------------------------------------------


def row(
    rank: int, version: str | None, type: str = "SQL", success: bool = True, description: str = "d"
) -> Row:
    return Row(rank, version, description, type, f"V{version}__d.sql", 1, success)


def test_history_is_replayed_as_flyway_reads_it() -> None:
    history = History.replay(
        [
            row(6, "3", "UNDO_SQL"),
            row(1, "0", "SCHEMA"),
            row(2, "1", "BASELINE"),
            row(3, "2"),
            row(4, "3"),
            row(5, None, description="views"),
            row(7, "4", success=False),
            row(8, None, "DELETE", description="views"),
        ]
    )
    assert list(history.applied) == [Version.parse("2")]
    assert history.baseline == Version.parse("1")
    assert history.repeatable == {}
    assert [failed.rank for failed in history.failed] == [7]
    with pytest.raises(ValueError, match="not a version"):
        History.replay([row(1, "x")])


def test_history_problems_are_flyways_validate(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path, {"V1__a.sql": "SELECT 1;", "V2__b.sql": "SELECT 2;", "V3__c.sql": "SELECT 3;"}
    )
    migrator = load_sql_folder(folder, WHERE)
    one, three = migrator.versioned[Version.parse("1")], migrator.versioned[Version.parse("3")]  # type: ignore[index]
    history = History.replay(
        [
            Row(1, "1", "a", "SQL", "V1__a.sql", one.checksum + 1, True),
            Row(2, "3", "c", "SQL", "V3__c.sql", three.checksum, True),
            Row(3, "9", "gone", "SQL", "V9__gone.sql", 5, True),
        ]
    )
    problems = [text for text, _ in history_problems(history, migrator.versioned, [], folder)]
    assert problems[0].startswith(f"{one.path}: changed after it was applied to the source")
    assert problems[1].startswith(
        "version 9 (V9__gone.sql) is recorded as applied to the source, but no file"
    )
    assert problems[2].startswith(f"{folder / 'V2__b.sql'}: version 2 is pending below 9")
