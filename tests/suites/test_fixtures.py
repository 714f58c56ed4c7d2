"""The fixtures as users write them, end to end in an inner pytest run: the three scopes,
the marker, the branch URLs, option help. In-process tests of the same machinery live in
``tests/integration``; here is only what needs a real pytest run around it."""

from __future__ import annotations

import json

import pytest

from tests.helpers import AlembicProject, our_branches, run_inner, summary_counts, write_tests

#: One module for every fixture a user writes by hand; the run order matters (a test that
#: destroys its branch runs before the one that checks it did not leak).
SCOPES = """
    import json, pathlib

    import psycopg, pytest, sqlalchemy

    def record(kind, info):
        with pathlib.Path("names.jsonl").open("a") as f:
            f.write(json.dumps([kind, info.name]) + "\\n")

    def widgets(conn):
        return conn.execute("SELECT count(*) FROM widgets").fetchone()[0]

    def columns(conn):
        return {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'")}

    def test_1_destroys_its_branch(db_branch, db_branch_info):
        record("function", db_branch_info)
        assert widgets(db_branch) == 1
        db_branch.execute("DROP TABLE widgets")
        db_branch.commit()

    def test_2_next_test_is_unaffected(db_branch, db_branch_info):
        record("function", db_branch_info)
        assert widgets(db_branch) == 1

    def test_3_module_writes(db_branch_module, db_branch_module_info):
        record("module", db_branch_module_info)
        db_branch_module.execute("INSERT INTO widgets (name) VALUES ('shared')")
        db_branch_module.commit()

    def test_4_module_sees_it(db_branch_module, db_branch_module_info):
        record("module", db_branch_module_info)
        assert widgets(db_branch_module) == 2

    def test_5_session(db_branch_session, db_branch_session_info):
        record("session", db_branch_session_info)
        assert db_branch_session.info.dbname == db_branch_session_info.name

    def test_6_urls_and_engine(db_branch_info, db_branch_engine):
        record("function", db_branch_info)
        with psycopg.connect(db_branch_info.conninfo) as c:
            assert c.info.dbname == db_branch_info.name
        with psycopg.connect(db_branch_info.url) as c:
            assert c.info.dbname == db_branch_info.name
        with db_branch_engine.connect() as c:
            assert c.execute(sqlalchemy.text("SELECT current_database()")).scalar() == db_branch_info.name
        assert sqlalchemy.make_url(db_branch_info.sqlalchemy_url).database == db_branch_info.name

    @pytest.mark.dbbranch(revision="r1")
    def test_7_marker_revision_then_upgrade(db_branch, db_branch_info):
        record("function", db_branch_info)
        assert columns(db_branch) == {"id", "name"}
        db_branch.execute("INSERT INTO widgets (name) VALUES ('old')")
        db_branch.commit()
        db_branch_info.upgrade("head")
        assert db_branch.execute("SELECT name, size FROM widgets ORDER BY id").fetchall() == [
            ("old", 1), ("seed", 1)]

    def test_8_upgrade_refuses_an_open_transaction(db_branch, db_branch_info):
        record("function", db_branch_info)
        assert columns(db_branch) == {"id", "name", "size"}
        with pytest.raises(Exception, match="commit or roll back"):
            db_branch_info.upgrade("head")
"""


def test_scopes_marker_and_teardown(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    """Function branches are isolated from each other (a destroyed branch does not leak),
    module and session branches are shared, the marker pins a revision that ``upgrade()``
    moves on; on the embedded server and on an existing one as a non-superuser."""
    write_tests(pytester, "test_scopes", SCOPES)
    result = run_inner(pytester, server_url, "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    rows = [json.loads(line) for line in (pytester.path / "names.jsonl").read_text().splitlines()]
    names = {kind: [name for k, name in rows if k == kind] for kind in ("function", "module", "session")}
    assert len(names["function"]) == len(set(names["function"])) == 5
    assert len(names["module"]) == 2 and len(set(names["module"])) == 1
    assert len(names["session"]) == 1
    assert not set(names["function"]) & set(names["module"])
    created, _dropped, kept = summary_counts(result)
    assert created >= 7 and kept == 0
    assert our_branches(server_url) == []
    # Two templates: head, and r1 for the marker.
    assert len(our_branches(server_url, "template")) == 2
    assert alembic_project.runs == 3  # two template builds and one upgrade()


def test_plugin_option_group_in_help(pytester: pytest.Pytester) -> None:
    """The options are grouped under the plugin's name, so a user finds them."""
    result = pytester.runpytest_inprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*pytest-dbbranch*", "*--dbbranch-url*", "*--dbbranch-keep*"])


def test_a_one_test_run_forks_one_branch(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """The plugin counts the function-scope branches the collected tests ask for, and the
    warm pool forks none ahead that no test will take: a one-test rerun (the edit-run loop)
    forks, and drops, exactly one. Two tests: the pool forks one branch ahead, for the
    second test (which forks its own if that one is not ready in time), and no more."""
    write_tests(
        pytester,
        "test_one",
        """
        def test_only(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)

        def test_without_a_database():
            pass
        """,
    )
    url = embedded_url
    result = run_inner(pytester, url, "-p", "no:randomly", "--dbbranch-pool-size", "2")
    result.assert_outcomes(passed=2)
    assert summary_counts(result) == (1, 1, 0)
    result.stdout.fnmatch_lines(["*templates: *"])
    assert "warm pool" not in result.stdout.str(), "a pool was made for the last test"

    write_tests(
        pytester,
        "test_two",
        """
        def test_second(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        """,
    )
    result = run_inner(pytester, url, "-p", "no:randomly", "--dbbranch-pool-size", "2")
    result.assert_outcomes(passed=3)
    created, dropped, _kept = summary_counts(result)
    assert created in (2, 3) and dropped == created, "forked more than one branch ahead"
    assert our_branches(url) == []
