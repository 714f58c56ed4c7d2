"""The migration checks (``review.MigrationChecks``): each fails for the reason it exists, on a
fixture chain made for that reason, reports every problem of the chain at once (revision,
file, what was there before and after), and leaves no branch behind. A check that cannot say
anything is skipped with its reason, never passed.

The chains start from ``alembic_project``: r1 creates ``widgets``, r2 adds ``size`` and one
seed row (production-shaped data for every later revision).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.errors import CheckFailed, CheckNotApplicable, ConfigError
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
    return MigrationChecks(make_manager(models=f"{models}:metadata"))


def failure_of(checks: MigrationChecks, check: str) -> CheckFailed:
    with pytest.raises(CheckFailed) as failure:
        checks.run(check)
    assert our_branches(str(checks.settings.url)) == [], "a check left its scratch branch"
    return failure.value


def skip_reason(checks: MigrationChecks, check: str) -> str:
    with pytest.raises(CheckNotApplicable) as skipped:
        checks.run(check)
    return str(skipped.value)


def test_every_check_passes_on_a_sound_project(checks: MigrationChecks) -> None:
    """The baseline the failures below are measured against. r2's downgrade deletes the seed
    row and its re-run inserts it with a new serial id: keys a sequence hands out are not
    compared, so this is no difference."""
    for check in CHECKS:
        checks.run(check)
    assert checks.notes == []
    assert our_branches(str(checks.settings.url)) == []


# -- applies ------------------------------------------------------------------------------------


def test_broken_migration_fails_applies(checks: MigrationChecks, alembic_project: AlembicProject) -> None:
    """Fine on an empty table, broken on production-shaped data (r2 inserted a row)."""
    path = alembic_project.add(
        "r3",
        "r2",
        "ALTER TABLE widgets ADD COLUMN code text NOT NULL",
        undo=("ALTER TABLE widgets DROP COLUMN code",),
    )
    failure = failure_of(checks, "applies")
    message = str(failure)
    assert message.startswith("the upgrade to 'head' fails on production-shaped data:")
    assert "Alembic migration failed at revision r3" in message
    assert 'column "code" of relation "widgets" contains null values' in message
    assert "template" not in message and "sealed" not in message
    assert failure.location is not None and failure.location[0] == str(path)


def test_one_bad_revision_fails_one_check_and_skips_the_others(
    checks: MigrationChecks, alembic_project: AlembicProject
) -> None:
    """The others say why they did not run and where to look, instead of failing again."""
    alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN code text NOT NULL")
    failure_of(checks, "applies")
    for check in ("idempotent", "reversible", "models-match"):
        reason = skip_reason(checks, check)
        assert reason.startswith("the upgrade itself fails (Alembic migration failed at revision r3"), check
        assert "see the 'applies' check" in reason
    checks.run("single-head")


# -- single-head ----------------------------------------------------------------------------------


def test_second_head_fails_single_head(
    make_manager: MakeManager, alembic_project: AlembicProject, models: str
) -> None:
    """With a target pinned to one head and with the default 'head' alike."""
    alembic_project.add("r3a", "r2", "SELECT 1", undo=("SELECT 1",))
    alembic_project.add("r3b", "r2", "SELECT 2", undo=("SELECT 2",))
    for revision in ("r3a", "head"):
        checks = MigrationChecks(make_manager(models=f"{models}:metadata", revision=revision))
        message = str(failure_of(checks, "single-head"))
        assert "has 2 heads (r3a, r3b); merge them (`alembic merge heads`)" in message, revision


def test_a_history_without_revisions_is_not_called_two_heads(
    make_manager: MakeManager, tmp_path: object
) -> None:
    """No revision is not 'zero heads, merge them' and no walking check passes on it."""
    empty = AlembicProject(tmp_path / "empty")  # type: ignore[operator]
    checks = MigrationChecks(make_manager(alembic_ini=str(empty.ini), root=empty.root))
    message = str(failure_of(checks, "single-head"))
    assert "has no revision at all" in message and "merge" not in message
    assert "no revision newer than the source's" in skip_reason(checks, "reversible")


# -- reversible -----------------------------------------------------------------------------------


def add_irreversible_chain(project: AlembicProject) -> dict[str, object]:
    """Four ways a downgrade goes wrong, one per revision, plus a sound one among them."""
    return {
        "r3": project.add("r3", "r2", "CREATE TABLE gadgets (id int)", undo=("DROP TABLE gizmos",)),
        "r4": project.add(
            "r4", "r3", "ALTER TABLE widgets ALTER COLUMN name DROP NOT NULL", undo=("SELECT 1",)
        ),
        "r5": project.add(
            "r5",
            "r4",
            "CREATE TYPE mood AS ENUM ('ok', 'sad')",
            "ALTER TABLE widgets ADD COLUMN mood mood",
            undo=("ALTER TABLE widgets DROP COLUMN mood",),
        ),
        "r6": project.add("r6", "r5", "CREATE INDEX widgets_name ON widgets (name)"),
        "r7": project.add("r7", "r6", "CREATE TABLE shelves (id int)", undo=("DROP TABLE shelves",)),
        "r8": project.add(
            "r8",
            "r7",
            "CREATE TABLE archive AS SELECT * FROM widgets",
            "DELETE FROM widgets",
            undo=("DROP TABLE archive",),
        ),
    }


def test_reversible_walks_every_revision_and_reports_every_problem(
    checks: MigrationChecks, alembic_project: AlembicProject
) -> None:
    """A downgrade that always fails, one that leaves a column NOT NULL, one that leaves an
    enum type behind, a missing one and one that loses rows: all in one failure, each with
    its revision, its file and the object before and after; the sound ones are not named."""
    paths = add_irreversible_chain(alembic_project)
    failure = failure_of(checks, "reversible")
    message = str(failure)
    assert message.startswith("5 of 8 revisions cannot be rolled back cleanly")
    blocks = {line.split(" ", 1)[0]: line for line in message.split("\nrevision ")[1:]}
    assert list(blocks) == sorted(blocks), "in the order of the history"
    assert sorted(blocks) == ["r3", "r4", "r5", "r6", "r8"], message
    for revision in blocks:
        assert str(paths[revision]) in blocks[revision]
    assert "its downgrade fails" in blocks["r3"] and 'table "gizmos" does not exist' in blocks["r3"]
    assert "column name" in blocks["r4"] and "NOT NULL" in blocks["r4"]
    assert (
        "mood" in blocks["r5"]
        and "after its downgrade" in blocks["r5"]
        and "before it: absent" in blocks["r5"]
    )
    assert "has no downgrade" in blocks["r6"]
    assert "table widgets: 1 rows before it, 0 after its downgrade" in blocks["r8"]
    assert failure.location is not None and failure.location[0] == str(paths["r3"]), (
        "the first in the history"
    )


def test_downgrades_optional_lists_missing_ones_and_checks_the_rest(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """A forward-only team: the revisions without a downgrade are listed, not failed, and a
    wrong downgrade elsewhere is still found."""
    alembic_project.add("r3", "r2", "CREATE INDEX widgets_name ON widgets (name)")
    checks = MigrationChecks(make_manager(downgrades_optional=True))
    checks.run("reversible")
    assert checks.notes == [
        f"revision r3 ({alembic_project.versions / 'r3.py'}) has no downgrade (dbbranch_downgrades_optional)"
    ]
    alembic_project.add(
        "r4",
        "r3",
        "CREATE TABLE gadgets (id int)",
        "CREATE TABLE gizmos (id int)",
        undo=("DROP TABLE gadgets",),
    )
    message = str(failure_of(MigrationChecks(make_manager(downgrades_optional=True)), "reversible"))
    assert "1 of 4 revisions" in message and "table public.gizmos" in message
    assert "not checked:" in message and "r3" in message.split("not checked:")[1]


def test_data_comparison_can_be_limited_to_counts_or_turned_off(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """A downgrade that rewrites values is caught by the hash, not by counts."""
    alembic_project.add("r3", "r2", "UPDATE widgets SET size = size + 1", undo=("SELECT 1",))
    assert "the values of size differ" in str(failure_of(MigrationChecks(make_manager()), "reversible"))
    MigrationChecks(make_manager(check_data="count")).run("reversible")
    MigrationChecks(make_manager(check_data="off")).run("reversible")


# -- idempotent -----------------------------------------------------------------------------------


def test_idempotent_fails_for_a_migration_that_appends(
    checks: MigrationChecks, alembic_project: AlembicProject
) -> None:
    path = alembic_project.add("r3", "r2", "INSERT INTO widgets (name) VALUES ('extra')", undo=("SELECT 1",))
    failure = failure_of(checks, "idempotent")
    message = str(failure)
    assert message.startswith("1 of 3 revisions do not give the same result when applied again")
    assert f"revision r3 ({path})" in message
    assert "table widgets: 2 rows applied once, 3 applied twice" in message
    lines = path.read_text().splitlines()
    assert failure.location == (str(path), lines.index("def upgrade():") + 1)


def test_idempotent_fails_for_a_migration_that_converts_twice(
    checks: MigrationChecks, alembic_project: AlembicProject
) -> None:
    alembic_project.add("r3", "r2", "UPDATE widgets SET size = size * 100", undo=("SELECT 1",))
    message = str(failure_of(checks, "idempotent"))
    assert "table widgets: the values of size differ (1 rows on both sides)" in message


def test_idempotent_names_the_revision_that_blocks_it(make_manager: MakeManager, tmp_path: object) -> None:
    """A chain that cannot be reverted cannot be applied twice: skipped, naming the blocker."""
    project = AlembicProject(tmp_path / "forward")  # type: ignore[operator]
    project.add("f1", None, "CREATE TABLE t (id int)")
    checks = MigrationChecks(make_manager(alembic_ini=str(project.ini), root=project.root))
    reason = skip_reason(checks, "idempotent")
    assert (
        reason.startswith("no revision could be applied twice: revision f1") and "blocks the check" in reason
    )


# -- models-match ---------------------------------------------------------------------------------


def test_model_not_migrated(checks: MigrationChecks, alembic_project: AlembicProject, models: str) -> None:
    """A column only in the models, named readably with both sides."""
    (alembic_project.root / f"{models}.py").write_text(
        MODELS.replace('    Column("size"', '    Column("colour", Text),\n    Column("size"')
    )
    message = str(failure_of(checks, "models-match"))
    assert f"the models ({models}:metadata) and the migrated schema differ in 1 places" in message
    assert "column colour on public.widgets: migrations: absent; models: text" in message
    assert "(" not in message.split("\n")[1].split(":")[0], "raw tuples"


def test_models_match_sees_what_autogenerate_misses(
    checks: MigrationChecks, alembic_project: AlembicProject, models: str
) -> None:
    """Enum labels and server defaults: Alembic's compare is blind to both by default."""
    alembic_project.add(
        "r3",
        "r2",
        "CREATE TYPE mood AS ENUM ('ok', 'sad')",
        "ALTER TABLE widgets ADD COLUMN mood mood",
        undo=("ALTER TABLE widgets DROP COLUMN mood", "DROP TYPE mood"),
    )
    text = MODELS.replace("import Column,", "import Enum, Column,").replace(
        'server_default=text("1")),',
        'server_default=text("2")),\n    Column("mood", Enum("ok", "sad", "happy", name="mood")),',
    )
    (alembic_project.root / f"{models}.py").write_text(text)
    message = str(failure_of(checks, "models-match"))
    assert "enum public.mood" in message and "happy" in message
    assert "column size on public.widgets" in message and "DEFAULT 2" in message


def test_models_without_the_tables_get_a_hint(
    checks: MigrationChecks, alembic_project: AlembicProject, models: str
) -> None:
    (alembic_project.root / f"{models}.py").write_text(
        "from sqlalchemy import MetaData\nmetadata = MetaData()\n"
    )
    message = str(failure_of(checks, "models-match"))
    assert "The models lack 1 of the" in message and "public.widgets" in message
    assert f"is the module that defines them imported by {models}?" in message


def test_what_models_cannot_describe_is_not_drift(
    checks: MigrationChecks, alembic_project: AlembicProject
) -> None:
    """A trigger function, a trigger and a comment added by migrations are not in a MetaData."""
    alembic_project.add(
        "r3",
        "r2",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER widgets_touch BEFORE UPDATE ON widgets FOR EACH ROW EXECUTE FUNCTION touch()",
        "COMMENT ON TABLE widgets IS 'things'",
        undo=(
            "DROP TRIGGER widgets_touch ON widgets",
            "DROP FUNCTION touch()",
            "COMMENT ON TABLE widgets IS NULL",
        ),
    )
    checks.run("models-match")


# -- settings -------------------------------------------------------------------------------------


def test_checks_take_explicit_settings(make_manager: MakeManager, settings: Settings) -> None:
    """A script may check another configuration than its manager's: the checks use theirs."""
    manager: BranchManager = make_manager(alembic_ini="none")
    MigrationChecks(manager, settings).run("applies")
    with pytest.raises(ConfigError, match=r"the migration checks need migrations"):
        MigrationChecks(manager).run("applies")
