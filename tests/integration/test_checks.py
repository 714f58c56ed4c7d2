"""The migration checks (``review.MigrationChecks``), each failing for the reason it exists
with a message that says what to fix, and each leaving no branch behind."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.errors import CheckFailed, ConfigError
from pytest_dbbranch.review import CHECKS, MigrationChecks
from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, our_branches
from tests.integration.support import MakeManager

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


@pytest.fixture
def models(alembic_project: AlembicProject, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A models module matching the widgets project, under a name no other test imports."""
    module = f"app_models_{uuid.uuid4().hex[:8]}"
    (alembic_project.root / f"{module}.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(alembic_project.root))
    yield module
    sys.modules.pop(module, None)


@pytest.fixture
def checks(make_manager: MakeManager, models: str) -> MigrationChecks:
    manager = make_manager(models=f"{models}:metadata")
    return MigrationChecks(manager)


def failure_of(checks: MigrationChecks, check: str) -> str:
    with pytest.raises(CheckFailed) as failure:
        checks.run(check)
    assert our_branches(str(checks.settings.url)) == [], "a check left its scratch branch"
    return str(failure.value)


def test_every_check_passes_on_a_sound_project(checks: MigrationChecks) -> None:
    """The baseline the failures below are measured against."""
    for check in CHECKS:
        checks.run(check)
    assert our_branches(str(checks.settings.url)) == []


def test_broken_migration_fails_applies(checks: MigrationChecks, alembic_project: AlembicProject) -> None:
    """Fine on an empty table, broken on production-shaped data (r2 inserted a row)."""
    alembic_project.add(
        "r3",
        "r2",
        "ALTER TABLE widgets ADD COLUMN code text NOT NULL",
        undo=("ALTER TABLE widgets DROP COLUMN code",),
    )
    message = failure_of(checks, "applies")
    assert "the upgrade from the source's revision (empty) to head fails on production-shaped data" in message
    assert "Alembic migration failed at revision r3" in message
    assert 'column "code" of relation "widgets" contains null values' in message


def test_second_head_fails_single_head(
    make_manager: MakeManager, alembic_project: AlembicProject, models: str
) -> None:
    """The check exists for this: with a target pinned to one head and with the default
    'head' alike, a forked history is a ``CheckFailed`` naming both heads and the fix."""
    alembic_project.add("r3a", "r2", "SELECT 1", undo=("SELECT 1",))
    alembic_project.add("r3b", "r2", "SELECT 2", undo=("SELECT 2",))
    for revision in ("r3a", "head"):
        checks = MigrationChecks(make_manager(models=f"{models}:metadata", revision=revision))
        message = failure_of(checks, "single-head")
        assert "has 2 heads (r3a, r3b); merge them with `alembic merge heads`" in message, revision


def test_missing_downgrade_is_named(checks: MigrationChecks, alembic_project: AlembicProject) -> None:
    """A downgrade that only passes cannot undo anything: the revision and its file are named."""
    path = alembic_project.add("r3", "r2", "CREATE TABLE gadgets (id int)")
    assert failure_of(checks, "reversible") == f"revision r3 ({path}) has no downgrade"


def test_irreversible_downgrade(checks: MigrationChecks, alembic_project: AlembicProject) -> None:
    """A downgrade that forgets part of its upgrade is caught by comparing the schemas around it."""
    alembic_project.add(
        "r3",
        "r2",
        "CREATE TABLE gadgets (id int)",
        "CREATE INDEX widgets_name ON widgets (name)",
        undo=("DROP TABLE gadgets",),  # forgets the index
    )
    message = failure_of(checks, "reversible")
    assert message.startswith("revision r3: downgrade does not restore the schema before it:")
    assert "widgets_name" in message


def test_model_not_migrated(checks: MigrationChecks, alembic_project: AlembicProject, models: str) -> None:
    """A column added to the models but never migrated is a difference Alembic names."""
    (alembic_project.root / f"{models}.py").write_text(
        MODELS.replace('    Column("size"', '    Column("colour", Text),\n    Column("size"')
    )
    message = failure_of(checks, "models-match")
    assert f"the models ({models}:metadata) and the migrated schema differ" in message
    assert "add_column" in message and "colour" in message


def test_non_idempotent_environment(checks: MigrationChecks, alembic_project: AlembicProject) -> None:
    """An env.py with a side effect on every run, outside any revision."""
    env = alembic_project.root / "migrations" / "env.py"
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
    message = failure_of(checks, "idempotent")
    assert "running the upgrade a second time changed the schema" in message
    assert "side_effect_" in message


def test_checks_take_explicit_settings(make_manager: MakeManager, settings: Settings) -> None:
    """A script may check another configuration than its manager's: the checks use theirs."""
    manager: BranchManager = make_manager(alembic_ini="none")
    MigrationChecks(manager, settings).run("applies")
    with pytest.raises(ConfigError, match=r"need an alembic\.ini"):
        MigrationChecks(manager).run("applies")
