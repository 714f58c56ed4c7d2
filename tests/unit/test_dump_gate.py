"""The gate every dump passes before psql sees it (``branching.dumps``): a dump may act on the
database it is restored into and on nothing else.

``pg_dump -C -c`` writes ``DROP DATABASE``/``CREATE DATABASE``/``\\connect``, ``pg_dumpall``
writes roles, a hand-made script may ``\\connect`` anywhere or run a shell: psql would obey
every one of them on the user's server. The gate reads the script line by line like psql's
lexer would (strings, dollar-quoted bodies, comments and COPY data are data, not commands),
refuses what reaches beyond the database, and drops ``SET`` lines of settings the server does
not know. No server here: scripts are small byte strings, settings a plain set.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from pytest_dbbranch.branching.dumps import Gate, UnsafeDump, detect_format
from pytest_dbbranch.errors import SourceError

#: What PostgreSQL 15 knows of the settings pg_dump 18 writes (no ``transaction_timeout``).
KNOWN = {"statement_timeout", "lock_timeout", "client_encoding", "standard_conforming_strings", "search_path"}
DUMP = Path("/dumps/snapshot.sql")
WHERE = "ini option dbbranch_source"


def gate() -> Gate:
    return Gate(known_settings=KNOWN, where=WHERE, path=DUMP)


def passed(script: str) -> str:
    """What the gate hands psql for ``script``."""
    return b"".join(gate().lines(script.encode().splitlines(keepends=True))).decode()


def refusal(script: str) -> str:
    """The message of the gate's refusal of ``script``."""
    with pytest.raises(UnsafeDump) as refused:
        passed(script)
    return str(refused.value)


FORBIDDEN = [
    ("CREATE DATABASE victim;", "CREATE DATABASE"),
    ("DROP DATABASE IF EXISTS victim;", "DROP DATABASE"),
    ("ALTER DATABASE victim OWNER TO mallory;", "ALTER DATABASE"),
    ("create role mallory login superuser;", "CREATE ROLE"),
    ("DROP USER alice;", "DROP USER"),
    ("ALTER GROUP admins ADD USER mallory;", "ALTER GROUP"),
    ("CREATE TABLESPACE fast LOCATION '/mnt';", "CREATE TABLESPACE"),
    ("DROP SUBSCRIPTION feed;", "DROP SUBSCRIPTION"),
    ("ALTER SYSTEM SET fsync = off;", "ALTER SYSTEM"),
    ("DROP OWNED BY alice;", "DROP OWNED"),
    ("REASSIGN OWNED BY alice TO mallory;", "REASSIGN OWNED"),
    ("CHECKPOINT;", "CHECKPOINT"),
]
#: COPY that runs a program or reads or writes a server file, instead of the dump's own data.
COPY_OUTSIDE = [
    "COPY widgets FROM PROGRAM 'curl evil';",
    "COPY widgets TO '/tmp/stolen.csv';",
    "copy widgets (id) from '/etc/passwd';",
]


def test_statements_beyond_the_database_are_refused_wherever_a_statement_starts() -> None:
    """At the start of a line (indented, any case, any spacing) and after a ``;`` on a line
    that began with harmless SQL: psql would run them all."""
    for statement, named in FORBIDDEN:
        for line in (statement, f"   {statement}", f"SELECT 1; {statement}", f"SELECT 1;{statement}"):
            message = refusal(f"SET statement_timeout = 0;\n{line}\n")
            assert named in message.upper(), (line, message)
            assert "line 2" in message, (line, message)
    assert "DROP DATABASE" in refusal("SELECT 1\n;   drop    database   victim;\n")
    for line in ("COPY widgets FROM PROGRAM 'curl evil';", "  copy widgets to program 'mail x';"):
        assert "line 2 has a COPY that reads or writes outside the dump" in refusal(f"SELECT 1;\n{line}\n")


def test_copy_of_a_server_file_or_a_program_is_refused() -> None:
    """A COPY that reads or writes a file on the server, or runs a program there, instead of
    the dump's own data (``FROM stdin``): refused at the start of a line and after a ``;``,
    as every other statement is."""
    slipped = []
    for statement in COPY_OUTSIDE:
        for line in (statement, f"SELECT 1; {statement}"):
            try:
                passed(f"{line}\n")
            except UnsafeDump:
                continue
            slipped.append(line)
    assert slipped == [], "reached psql:\n" + "\n".join(slipped)


def test_the_refusal_names_the_file_the_line_and_what_to_do() -> None:
    """A CI log reader learns which file and line, that nothing was restored, and how to
    make a dump that is accepted; the error is a ``SourceError`` like any bad source."""
    script = "-- a dump\nSET statement_timeout = 0;\n\nCREATE TABLE t (id int);\nDROP DATABASE prod;\n"
    with pytest.raises(SourceError) as refused:
        passed(script)
    message = str(refused.value)
    assert isinstance(refused.value, UnsafeDump)
    assert message.startswith(f"{WHERE}: {DUMP} line 5 has DROP DATABASE (DROP DATABASE prod;)")
    assert "nothing was restored" in message
    assert "pg_dump --no-owner --no-privileges" in message and "without -C/--create and -c/--clean" in message


def test_psql_meta_commands_other_than_harmless_ones_are_refused() -> None:
    """``\\connect`` (and ``\\c``) would restore into another database; ``\\!`` runs a shell;
    ``\\i``/``\\o``/``\\copy``/``\\setenv`` read or write other files. What pg_dump writes
    (``\\restrict``, ``\\unrestrict``) and output-only commands pass."""
    for command in (
        r"\connect postgres",
        r"\c victim",
        r"\! rm -rf ~",
        r"\i other.sql",
        r"\ir other.sql",
        r"\o /tmp/out",
        r"\copy widgets from '/etc/passwd'",
        r"\setenv PGDATABASE victim",
        r"\gexec",
    ):
        name = command.split()[0]
        message = refusal(f"SELECT 1;\n  {command}\n")
        assert f"line 2 has the psql command {name}" in message, message
    harmless = (
        "\\restrict abc123\n\\set ON_ERROR_STOP on\n\\unset ON_ERROR_STOP\n\\encoding UTF8\n"
        "\\echo restoring\n\\pset pager off\n\\qecho done\n\\unrestrict abc123\n"
    )
    assert passed(harmless) == harmless


LEGIT = """\
-- DROP DATABASE victim; (a comment)
SELECT 1; -- \\connect postgres
COMMENT ON TABLE widgets IS 'never CREATE DATABASE here;
DROP DATABASE victim; \\connect postgres
it''s still the comment';
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'DROP DATABASE victim';
\\connect postgres
    RETURN 'CREATE ROLE x';
END $$;
CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'x; DROP ROLE y' $body$;
INSERT INTO notes VALUES ('a; DROP DATABASE victim', $q$; CHECKPOINT$q$);
CREATE TABLE t (checkpoint int, "role" text, database text);
COPY public.notes (body) FROM stdin;
DROP DATABASE victim
\\connect postgres
CHECKPOINT; ALTER SYSTEM SET fsync = off
\\.
SELECT 'done';
"""


def test_strings_function_bodies_comments_and_copy_data_are_not_commands() -> None:
    """Data that mentions forbidden words passes unchanged: string literals (across lines,
    with doubled quotes), dollar-quoted bodies (tagged or not), ``--`` comments, column names,
    and COPY data up to its ``\\.``."""
    assert passed(LEGIT) == LEGIT


def test_copy_data_ends_at_its_terminator() -> None:
    """After ``\\.`` the script is SQL again: a statement there is checked (line 4)."""
    script = "COPY notes (body) FROM stdin;\nDROP DATABASE victim\n\\.\nDROP DATABASE victim;\n"
    assert "line 4 has DROP DATABASE" in refusal(script)


def test_unknown_settings_are_dropped_known_ones_kept() -> None:
    """A newer pg_dump writes settings an older server rejects (``transaction_timeout`` is
    PostgreSQL 17+): those ``SET`` lines go, in any spelling; known ones and other SQL stay."""
    script = (
        "SET statement_timeout = 0;\n"
        "SET transaction_timeout = 0;\n"
        "set Transaction_Timeout TO 0;\n"
        "SET SESSION transaction_timeout = 0;\n"
        "SET client_encoding = 'UTF8';\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n"
        "CREATE TABLE settings_log (transaction_timeout int);\n"
    )
    checked = gate()
    out = b"".join(checked.lines(script.encode().splitlines(keepends=True))).decode()
    assert out.splitlines() == [
        "SET statement_timeout = 0;",
        "SET client_encoding = 'UTF8';",
        "SELECT pg_catalog.set_config('search_path', '', false);",
        "CREATE TABLE settings_log (transaction_timeout int);",
    ]
    assert [name.lower() for name in checked.dropped] == ["transaction_timeout"] * 3


#: Each hides the forbidden statement on its next line from a lexer that knows only
#: single-quoted strings, ``$tag$`` bodies and ``--`` comments; psql runs the statement.
HIDERS = {
    "quoted identifier with an apostrophe": 'CREATE TABLE "it\'s" (a int);',
    "identifier with dollar signs": "CREATE TABLE price$usd$total (a int);",
    "block comment with an apostrophe": "/* the owner's snapshot */",
    "escape string with a backslash quote": "INSERT INTO notes VALUES (E'it\\'s');",
    "statement split across lines": "DROP",
}


def test_the_way_sql_is_written_does_not_hide_a_forbidden_statement() -> None:
    """psql's lexer knows double-quoted identifiers (``"it's"``), identifiers containing
    ``$``, ``/* */`` comments, ``E''`` strings, and statements spanning lines; a gate that
    does not is told a string or body is still open and lets the next line through."""
    slipped = []
    for label, line in HIDERS.items():
        follower = "DATABASE victim;" if line == "DROP" else "DROP DATABASE victim;"
        try:
            passed(f"{line}\n{follower}\nSELECT 'x';\n")
        except UnsafeDump:
            continue
        slipped.append(label)
    assert slipped == [], f"DROP DATABASE reached psql after: {', '.join(slipped)}"


def test_the_format_is_read_from_the_content_not_the_suffix(tmp_path: Path) -> None:
    """A custom archive named ``.sql`` is an archive, SQL named ``.dump`` is SQL; a folder is
    a ``-Fd`` archive only with its ``toc.dat``; a tar archive holds ``toc.dat`` first;
    anything else is refused with the way to make a good dump."""
    custom = tmp_path / "prod.sql"
    custom.write_bytes(b"PGDMP\x01\x10\x00" + bytes(64))
    plain = tmp_path / "prod.dump"
    plain.write_text("--\n-- PostgreSQL database dump\n--\nCREATE TABLE t (id int);\n")
    folder = tmp_path / "prod_dir"
    folder.mkdir()
    (folder / "toc.dat").write_bytes(b"PGDMP")
    tar = tmp_path / "prod.backup"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
        archive.add(folder / "toc.dat", arcname="toc.dat")
    assert [detect_format(path, WHERE) for path in (custom, plain, folder, tar)] == [
        "custom",
        "plain",
        "directory",
        "tar",
    ]
    binary = tmp_path / "photo.sql"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    empty_folder = tmp_path / "not_a_dump"
    empty_folder.mkdir()
    for path, said in (
        (binary, "neither a plain SQL dump nor a pg_dump archive"),
        (empty_folder, "no toc.dat"),
    ):
        with pytest.raises(SourceError, match=said) as refused:
            detect_format(path, WHERE)
        assert str(refused.value).startswith(f"{WHERE}: {path}")


def test_what_pg_dump_writes_for_foreign_servers_and_custom_settings_passes() -> None:
    """``CREATE USER MAPPING`` is how pg_dump writes a postgres_fdw login, not a role; a
    ``SET`` of a custom (dotted) setting is accepted by every server, so it is kept."""
    script = (
        "CREATE USER MAPPING FOR CURRENT_USER SERVER remote OPTIONS (user 'x');\n"
        "ALTER USER MAPPING FOR CURRENT_USER SERVER remote OPTIONS (SET user 'y');\n"
        "SET app.tenant = 'acme';\n"
        "SET transaction_timeout = 0;\n"
    )
    kept = passed(script)
    assert "USER MAPPING FOR CURRENT_USER SERVER remote OPTIONS (user" in kept
    assert "SET app.tenant" in kept
    assert "transaction_timeout" not in kept


def test_escape_strings_follow_standard_conforming_strings() -> None:
    """With ``standard_conforming_strings`` off (very old dumps), a backslash escapes a quote
    in every string, so ``'it\\'s'`` does not open a string that hides the next statement."""
    off = "SET standard_conforming_strings = off;\nINSERT INTO t VALUES ('it\\'s');\nDROP DATABASE victim;\n"
    assert "DROP DATABASE" in refusal(off)
    on = "INSERT INTO t VALUES ('C:\\');\nSELECT 1;\n"
    assert passed(on) == on
