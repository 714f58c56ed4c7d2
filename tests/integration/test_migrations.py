"""``migrations.alembic``: Alembic run in process on a database, with errors that name the
revision, its file and the statement, and refusals of targets that are not one revision."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import ConfigError, MigrationError
from pytest_dbbranch.migrations.alembic import load_alembic
from pytest_dbbranch.migrations.versions import current_revisions, revisions_since
from tests.helpers import AlembicProject, create_database, drop_database

WHERE = "--dbbranch-revision"


@pytest.fixture
def target(clean_embedded: str) -> Iterator[ServerAddress]:
    """An empty database to migrate."""
    name = "migrations_scratch"
    create_database(clean_embedded, name)
    yield dataclasses.replace(ServerAddress.parse(clean_embedded), dbname=name)
    drop_database(clean_embedded, name)


def line_of(path: Path, text: str) -> tuple[int, str]:
    """Number and stripped code of the line of ``path`` that holds ``text``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number, line.strip()
    raise AssertionError(f"{text!r} not in {path}")


def revisions_at(address: ServerAddress) -> tuple[str, ...]:
    with psycopg.connect(address.conninfo()) as conn:
        return current_revisions(conn)


def test_upgrade_and_downgrade_move_the_version_table(
    alembic_project: AlembicProject, target: ServerAddress
) -> None:
    """Upgrades and downgrades run in process on the given database; ``revisions_since`` lists
    what an upgrade from a database's revision applies, in order."""
    migrator = load_alembic(alembic_project.ini, "ini option dbbranch_alembic_ini")
    assert revisions_at(target) == ()
    assert [script.revision for script in revisions_since(migrator.script, (), "head")] == ["r1", "r2"]
    migrator.upgrade(target, "r1")
    assert revisions_at(target) == ("r1",)
    assert [script.revision for script in revisions_since(migrator.script, ("r1",), "head")] == ["r2"]
    migrator.upgrade(target, "head")
    assert revisions_at(target) == ("r2",)
    migrator.downgrade(target, "r1")
    assert revisions_at(target) == ("r1",)


def test_failing_statement_is_named_with_revision_and_file(
    alembic_project: AlembicProject, target: ServerAddress
) -> None:
    """The message is what a CI log reader needs: which revision, which file, which statement,
    the database's own error, and that nothing was left behind; the upgrade rolled back."""
    path = alembic_project.add(
        "r3", "r2", "ALTER TABLE widgets ADD COLUMN code text", "UPDATE widgets SET nme = 'x'"
    )
    migrator = load_alembic(alembic_project.ini, "ini option dbbranch_alembic_ini")
    with pytest.raises(MigrationError) as failure:
        migrator.upgrade(target, "head")
    lines = str(failure.value).splitlines()
    assert lines[0] == "Alembic migration failed at revision r3 (upgrading a branch to 'head')."
    line, code = line_of(path, "nme")
    assert lines[1] == f"  file: {path}, line {line}: {code}"
    assert lines[2] == "  statement: UPDATE widgets SET nme = 'x'"
    assert lines[3] == '  error: UndefinedColumn: column "nme" of relation "widgets" does not exist'
    assert lines[-1].startswith("  -> fix that migration")
    assert revisions_at(target) == (), "the failed upgrade must roll back as one transaction"


def test_python_error_in_a_revision_names_it(alembic_project: AlembicProject, target: ServerAddress) -> None:
    """No SQL statement to show: the revision is found from the traceback."""
    path = alembic_project.add("r3", "r2")
    path.write_text(
        path.read_text().replace(
            "    pass\n\ndef downgrade", "    raise RuntimeError('boom')\n\ndef downgrade", 1
        )
    )
    migrator = load_alembic(alembic_project.ini, "ini option dbbranch_alembic_ini")
    with pytest.raises(MigrationError) as failure:
        migrator.upgrade(target, "head")
    message = str(failure.value)
    assert "Alembic migration failed at revision r3" in message
    line, code = line_of(path, "boom")
    assert code == "raise RuntimeError('boom')"
    assert f"  file: {path}, line {line}: {code}\n" in message
    assert "error: RuntimeError: boom" in message
    assert "statement:" not in message


def test_resolve_accepts_one_revision_only(alembic_project: AlembicProject) -> None:
    """A target is one known revision: 'head' of a forked history and unknown ids are refused
    with what to do about them."""
    migrator = load_alembic(alembic_project.ini, "ini option dbbranch_alembic_ini")
    assert migrator.resolve("head", WHERE) == ("r2",)
    assert migrator.resolve("r1", WHERE) == ("r1",)
    with pytest.raises(MigrationError, match=f"{WHERE}: target revision 'nope' does not exist in "):
        migrator.resolve("nope", WHERE)
    alembic_project.add("r3a", "r2", "SELECT 1")
    alembic_project.add("r3b", "r2", "SELECT 2")
    forked = load_alembic(alembic_project.ini, "ini option dbbranch_alembic_ini")
    with pytest.raises(MigrationError) as failure:
        forked.resolve("head", WHERE)
    assert "has 2 heads (r3a, r3b); merge them with `alembic merge heads` or set --dbbranch-revision" in str(
        failure.value
    )
    assert forked.resolve("r3a", WHERE) == ("r3a",)


@pytest.mark.parametrize(
    ("ini_text", "make_env", "message"),
    [
        (None, True, "{where}: Alembic config file {ini} does not exist"),
        ("this is not an ini file\n[[[", True, "{ini}: malformed alembic.ini"),
        ("[alembic]\nsqlalchemy.url = x\n", True, "{ini}: no [alembic] section with script_location"),
        ("[alembic]\nscript_location = %(here)s/nowhere\n", True, "{ini}: script_location is not usable"),
        (
            "[alembic]\nscript_location = %(here)s/migrations\n",
            False,
            "{ini}: no env.py in the script directory",
        ),
    ],
    ids=["missing", "malformed", "no-script-location", "missing-script-directory", "no-env-py"],
)
def test_unusable_alembic_ini_is_named(
    tmp_path: Path, ini_text: str | None, make_env: bool, message: str
) -> None:
    """Each way an alembic.ini can be unusable is reported with the file, before any branch
    is made."""
    ini = tmp_path / "alembic.ini"
    if ini_text is not None:
        ini.write_text(ini_text)
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    if make_env:
        (tmp_path / "migrations" / "env.py").write_text("")
    where = "ini option dbbranch_alembic_ini"
    with pytest.raises(ConfigError) as failure:
        load_alembic(ini, where)
    assert message.format(where=where, ini=ini) in str(failure.value)
