"""Runs never break each other: a run that is still forking from its template keeps it,
whatever another run of the same project builds or ``dbbranch gc`` collects meanwhile; once
it ends, its template is garbage like any stale one.

Run A is a real pytest process held in the middle of its run (its first test blocks on its
standard input); run B and ``dbbranch gc`` happen while it waits.
"""

from __future__ import annotations

import pytest

from tests.helpers import AlembicProject, our_branches, run_inner, write_tests
from tests.suites.live_run import LiveRun
from tests.suites.support import dbbranch

RUN_A = """
    import sys

    def test_holds_a_branch_while_b_runs(db_branch, db_branch_info):
        print("A-HOLDS", db_branch_info.name, flush=True)
        sys.stdin.readline()
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)

    def test_forks_after_b(db_branch):
        # Forked from A's own template, after B replaced it: no column of B's migration.
        columns = db_branch.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'"
        ).fetchall()
        assert sorted(c for (c,) in columns) == ["id", "name", "size"]
"""

RUN_B = """
    def test_sees_the_new_migration(db_branch):
        db_branch.execute("SELECT colour FROM widgets")
"""


def test_a_new_template_never_pulls_the_old_one_from_under_a_live_run(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """B, in the same folder after a migration edit, builds a new template of the same group;
    A's template stays while A runs (gc leaves it and A's branches too), A forks from it after
    B and passes; after A, ``dbbranch gc`` removes it as stale."""
    write_tests(pytester, "test_a", RUN_A)
    write_tests(pytester, "test_b", RUN_B)
    # No warm pool: A's second test forks from the template after B, not from a branch
    # forked ahead before B.
    with LiveRun(
        pytester.path, "test_a.py", "--dbbranch-url", embedded_url, env={"DBBRANCH_POOL_SIZE": "0"}
    ) as a:
        a.wait_for("A-HOLDS")
        [template_a] = our_branches(embedded_url, "template")
        branches_a = our_branches(embedded_url)
        assert branches_a

        alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN colour text")
        b = run_inner(pytester, embedded_url, "test_b.py")
        b.assert_outcomes(passed=1)
        b.stdout.fnmatch_lines(["*templates: *1 built*"])
        [template_b] = set(our_branches(embedded_url, "template")) - {template_a}

        code, out, err = dbbranch(capsys, "gc", "--url", embedded_url)
        assert code == 0, err
        assert template_a not in out
        assert set(our_branches(embedded_url, "template")) == {template_a, template_b}
        assert our_branches(embedded_url) == branches_a, "gc took a live run's branches"

        a.release()
        assert a.finish() == 0, a.output
        assert "2 passed" in a.output

    code, out, err = dbbranch(capsys, "gc", "--url", embedded_url)
    assert code == 0, err
    assert f"deleted {template_a}  (stale template, replaced by {template_b})" in out
    assert our_branches(embedded_url, "template") == [template_b]
    assert our_branches(embedded_url) == []
