"""Migration checks as test items: each passing, and each failing for the reason it exists."""

from __future__ import annotations

import pytest
from conftest import AlembicProject, drop_ours, our_branches, run_inner, write_tests

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

ONE_TEST = "def test_app(db_branch):\n    pass\n"


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    drop_ours(embedded_url)


@pytest.fixture
def checked(pytester: pytest.Pytester, alembic_project: AlembicProject) -> AlembicProject:
    (pytester.path / "app_models.py").write_text(MODELS)
    pytester.makeini("[pytest]\ndbbranch_models = app_models:metadata\n")
    write_tests(pytester, "test_app", ONE_TEST)
    return alembic_project


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Check name -> PASSED/FAILED, from -rA's short summary."""
    found = {}
    for line in result.stdout.lines:
        for status in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(status + " ") and "dbbranch-migrations::" in line:
                name = line.split("dbbranch-migrations::", 1)[1].split()[0]
                found[name] = status
    return found


def test_all_checks_pass_and_are_ordinary_items(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA")
    result.assert_outcomes(passed=6)
    assert outcomes(result) == {
        "single-head": "PASSED",
        "applies": "PASSED",
        "idempotent": "PASSED",
        "reversible": "PASSED",
        "models-match": "PASSED",
    }
    assert our_branches(embedded_url) == []


def test_checks_are_off_by_default_and_selectable(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-k", "applies", "-rA")
    result.assert_outcomes(passed=1, deselected=5)
    assert outcomes(result) == {"applies": "PASSED"}


def test_ini_switch(pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str) -> None:
    pytester.makeini("[pytest]\ndbbranch_check_migrations = true\n")
    write_tests(pytester, "test_app", ONE_TEST)
    result = run_inner(pytester, embedded_url, "-rA")
    assert set(outcomes(result)) == {"single-head", "applies", "idempotent", "reversible"}


def test_broken_migration_fails_applies(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    # Fine on an empty table, broken on production-shaped data (r2 inserted a row).
    checked.add(
        "r3",
        "r2",
        "ALTER TABLE widgets ADD COLUMN code text NOT NULL",
        undo=("ALTER TABLE widgets DROP COLUMN code",),
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "applies")
    assert outcomes(result) == {"applies": "FAILED"}
    result.stdout.fnmatch_lines(
        [
            "*migration check 'applies' failed:*",
            "*fails on production-shaped data*",
            "*Alembic migration failed at revision r3*",
            '*column "code" of relation "widgets" contains null values*',
        ]
    )
    assert our_branches(embedded_url) == []


def test_second_head_fails_single_head(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    checked.add("r3a", "r2", "SELECT 1", undo=("SELECT 1",))
    checked.add("r3b", "r2", "SELECT 2", undo=("SELECT 2",))
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "single")
    assert outcomes(result) == {"single-head": "FAILED"}
    result.stdout.fnmatch_lines(["*has 2 heads (r3a, r3b); merge them with `alembic merge heads`*"])


def test_missing_downgrade_is_named(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    checked.add("r3", "r2", "CREATE TABLE gadgets (id int)")
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "reversible")
    assert outcomes(result) == {"reversible": "FAILED"}
    result.stdout.fnmatch_lines(["*revision r3 (*r3.py) has no downgrade*"])


def test_irreversible_downgrade(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    checked.add(
        "r3",
        "r2",
        "CREATE TABLE gadgets (id int)",
        "CREATE INDEX widgets_name ON widgets (name)",
        undo=("DROP TABLE gadgets",),  # forgets the index
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "reversible")
    assert outcomes(result) == {"reversible": "FAILED"}
    result.stdout.fnmatch_lines(
        [
            "*revision r3: downgrade does not restore the schema before it*",
            "*widgets_name*",
        ]
    )
    assert our_branches(embedded_url) == []


def test_model_not_migrated(pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str) -> None:
    (pytester.path / "app_models.py").write_text(
        MODELS.replace('    Column("size"', '    Column("colour", Text),\n    Column("size"')
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "models")
    assert outcomes(result) == {"models-match": "FAILED"}
    result.stdout.fnmatch_lines(
        [
            "*the models (app_models:metadata) and the migrated schema differ*",
            "*add_column*colour*",
        ]
    )


def test_non_idempotent_environment(
    pytester: pytest.Pytester, checked: AlembicProject, embedded_url: str
) -> None:
    env = checked.root / "migrations" / "env.py"
    # An env.py with a side effect on every run, outside any revision.
    env.write_text(
        env.read_text().replace(
            "else:\n    context.configure(connection=connectable, target_metadata=None)",
            "else:\n    import sqlalchemy\n"
            "    log = os.path.join(os.path.dirname(__file__), '..', 'alembic_runs.log')\n"
            "    n = len(open(log).readlines())\n"
            "    ddl = f'CREATE TABLE IF NOT EXISTS side_effect_{n} (id int)'\n"
            "    connectable.execute(sqlalchemy.text(ddl))\n"
            "    context.configure(connection=connectable, target_metadata=None)",
        )
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-check-migrations", "-rA", "-k", "idempotent")
    assert outcomes(result) == {"idempotent": "FAILED"}
    result.stdout.fnmatch_lines(["*running the upgrade a second time changed the schema*", "*side_effect_*"])
