"""Migration checks as pytest items: how a user turns them on and picks them. Each check's
own failure is tested in process (``tests/integration``); all five passing on a real
application, as items of a parallel run, is in ``test_guarantees.py``."""

from __future__ import annotations

import pytest

from tests.helpers import AlembicProject, item_outcomes, our_branches, run_inner, write_tests
from tests.suites.support import check_outcomes

MODELS = """
from sqlalchemy import Column, Integer, MetaData, Table, Text, text

metadata = MetaData()
widgets = Table(
    "widgets", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("size", Integer, nullable=False, server_default=text("1")),
)
"""


def test_checks_are_opt_in_and_selectable(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """Off by default, even with models configured; the ini switch adds one item per check
    (no models-match without models), reported and selected with ``-k`` like any test."""
    (pytester.path / "app_models.py").write_text(MODELS)
    pytester.makeini("[pytest]\ndbbranch_models = app_models:metadata\n")
    write_tests(pytester, "test_app", "def test_app(db_branch):\n    pass\n")
    result = run_inner(pytester, embedded_url, "-rA")
    result.assert_outcomes(passed=1)
    assert list(item_outcomes(result).values()) == ["PASSED"]
    assert check_outcomes(result) == {}

    pytester.makeini("[pytest]\ndbbranch_check_migrations = true\n")
    result = run_inner(pytester, embedded_url, "-rA", "-k", "applies or single")
    # Five items: test_app and four checks, of which two are selected.
    result.assert_outcomes(passed=2, deselected=3)
    assert check_outcomes(result) == {"single-head": "PASSED", "applies": "PASSED"}
    assert our_branches(embedded_url) == []


def test_one_bad_revision_is_one_failed_item(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """A revision that breaks on production-shaped data fails 'applies' with the revision,
    its file and line as the report's location; the checks that need a working upgrade are
    skipped saying why; the run is not stopped before the checks can say it."""
    (pytester.path / "app_models.py").write_text(MODELS)
    path = alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN code text NOT NULL")
    pytester.makeini("[pytest]\ndbbranch_check_migrations = true\ndbbranch_models = app_models:metadata\n")
    write_tests(pytester, "test_app", "def test_app(db_branch):\n    pass\n")
    result = run_inner(pytester, embedded_url, "-v", "-rfEs")
    text = result.stdout.str()
    verdicts = {
        line.split()[0].rsplit("::", 1)[1]: line.split()[1]
        for line in text.splitlines()
        if line.startswith(".::dbbranch-migrations::")
    }
    assert verdicts == {
        "single-head": "PASSED",
        "applies": "FAILED",
        "idempotent": "SKIPPED",
        "reversible": "SKIPPED",
        "models-match": "SKIPPED",
    }, text
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]3[]] *: the upgrade itself fails (Alembic migration failed at revision r3 *;"
            " see the 'applies' check"
        ]
    )
    assert f"{path}, line " in text, "the failure names the migration file and line"
    assert "template was not built" not in text and "sealed" not in text
    assert our_branches(embedded_url) == []
