"""Migrations behind one interface: an env.py that picks its version folders at run time, a
user's own function, and the setting that chooses between tools."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.errors import CheckFailed, CheckNotApplicable, ConfigError, MigrationError
from pytest_dbbranch.migrations import load_migrator
from pytest_dbbranch.review import MigrationChecks
from pytest_dbbranch.settings import Settings
from tests.helpers import ENV_PY, AlembicProject
from tests.integration.support import MakeManager

#: The env.py of a project that keeps its revisions where its settings say, not in versions/.
PICKS_FOLDERS = (
    "import os\nfrom alembic import context\n"
    "context.script.version_locations = [os.path.join(os.path.dirname(__file__), '..', 'app_revisions')]\n"
) + ENV_PY


def moved_project(root: Path) -> AlembicProject:
    project = AlembicProject(root)
    project.add_widgets()
    target = root / "app_revisions"
    project.versions.rename(target)
    project.versions.mkdir()
    (root / "migrations" / "env.py").write_text(PICKS_FOLDERS)
    return project


def test_version_folders_chosen_by_env_py_are_the_ones_used(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    """Heads, the fingerprint and the checks see the revisions Alembic really runs, not the
    empty folder the configuration names."""
    project = moved_project(tmp_path / "moved")
    settings_args = {"alembic_ini": str(project.ini), "root": project.root}
    manager = make_manager(**settings_args)
    migrator = load_migrator(manager.settings)
    assert migrator is not None
    assert migrator.heads() == ["r2"]
    assert [name for name, _ in migrator.files() if name.endswith("r2.py")]
    branch = manager.create(scope="function", node_id="t::moved")
    with psycopg.connect(branch.conninfo) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("r2",)
        assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    manager.release(branch)
    checks = MigrationChecks(manager)
    checks.run("single-head")
    checks.run("reversible")


def test_version_folders_env_py_hides_are_one_clear_error(make_manager: MakeManager, tmp_path: Path) -> None:
    """When env.py picks its folders only while connected (so running it offline teaches
    nothing), the upgrade records revisions no file read defines: one message saying so,
    never a template silently left at the source."""
    project = moved_project(tmp_path / "hidden")
    env = project.root / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace(
            "context.script.version_locations = ",
            "if context.is_offline_mode():\n"
            "    raise SystemExit('online only')\n"
            "context.script.version_locations = ",
        )
    )
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    with pytest.raises(MigrationError) as failure:
        manager.create(scope="function", node_id="t::hidden")
    message = str(failure.value)
    assert "records revisions (r2) that no file in the version folders" in message
    assert "env.py picks other version folders at run time" in message
    assert "online only" in message


CALLABLE = """
import psycopg

CALLS = []

def migrate(url, target):
    CALLS.append(target)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE things (id int PRIMARY KEY)")
        conn.execute("INSERT INTO things VALUES (1)")

def broken(url, target):
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE things (id int PRIMARY KEY)")
    raise RuntimeError(f"cannot finish with {url}")
"""


def test_a_users_function_migrates_the_template_once(make_manager: MakeManager, tmp_path: Path) -> None:
    module = f"own_migrations_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(CALLABLE)
    try:
        manager = make_manager(migrations=f"callable:{module}:migrate", alembic_ini="none", root=tmp_path)
        for node in ("t::a", "t::b"):
            branch = manager.create(scope="function", node_id=node)
            with psycopg.connect(branch.conninfo) as conn:
                assert conn.execute("SELECT id FROM things").fetchall() == [(1,)]
            manager.release(branch)
        assert sys.modules[module].CALLS == ["head"], "migrated once, into the template"
        checks = MigrationChecks(manager)
        checks.run("applies")
        for check in ("single-head", "reversible", "idempotent"):
            with pytest.raises(CheckNotApplicable):
                checks.run(check)
    finally:
        sys.modules.pop(module, None)


def test_a_failing_function_names_its_file_and_line(make_manager: MakeManager, tmp_path: Path) -> None:
    module = f"own_migrations_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{module}.py"
    path.write_text(CALLABLE)
    try:
        manager = make_manager(migrations=f"callable:{module}:broken", alembic_ini="none", root=tmp_path)
        with pytest.raises(MigrationError) as failure:
            manager.create(scope="function", node_id="t::broken")
        message = str(failure.value)
        line = CALLABLE.splitlines().index('    raise RuntimeError(f"cannot finish with {url}")') + 1
        assert f"the migration function {module}:broken failed" in message
        assert f"file: {path}, line {line}" in message
        assert "RuntimeError: cannot finish with" in message
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("flyway", "expected auto, alembic, none, sql:FOLDER or callable:package.module:function"),
        ("callable:nodots", "expected auto, alembic"),
        ("sql:", "expected auto, alembic"),
    ],
)
def test_the_migrations_setting_refuses_what_it_cannot_read(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(migrations=value)


def test_alembic_named_but_missing_is_an_error(tmp_path: Path) -> None:
    settings = Settings(migrations="alembic", root=tmp_path)
    with pytest.raises(ConfigError, match="migrations = alembic, but no Alembic configuration was found"):
        load_migrator(settings)
    assert load_migrator(dataclasses.replace(settings, migrations="auto")) is None


def test_a_flyway_folder_builds_the_template_and_is_checked(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    """``sql:FOLDER``: versioned files migrate the template, the history is Flyway's, and the
    checks walk it with the undo files; a wrong undo is reported like an Alembic one."""
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "V1__create_items.sql").write_text("CREATE TABLE items (id int PRIMARY KEY, name text);\n")
    (folder / "U1__create_items.sql").write_text("DROP TABLE items;\n")
    (folder / "V2__seed.sql").write_text("INSERT INTO items VALUES (1, 'one');\n")
    (folder / "U2__seed.sql").write_text("DELETE FROM items;\n")
    (folder / "V3__index.sql").write_text(
        "CREATE INDEX items_name ON items (name);\nCREATE TABLE notes (id int);\n"
    )
    (folder / "U3__index.sql").write_text("DROP INDEX items_name;\n")  # forgets notes
    manager = make_manager(migrations=f"sql:{folder}", alembic_ini="none", root=tmp_path)
    branch = manager.create(scope="function", node_id="t::flyway")
    with psycopg.connect(branch.conninfo) as conn:
        assert conn.execute("SELECT name FROM items").fetchall() == [("one",)]
        history = conn.execute("SELECT version, success FROM flyway_schema_history ORDER BY installed_rank")
        assert history.fetchall() == [("1", True), ("2", True), ("3", True)]
    manager.release(branch)
    checks = MigrationChecks(manager)
    checks.run("single-head")
    checks.run("applies")
    with pytest.raises(CheckFailed) as failure:
        checks.run("idempotent")
    assert "applying it again after its downgrade fails" in str(failure.value)
    assert 'relation "notes" already exists' in str(failure.value)
    with pytest.raises(CheckFailed) as failure:
        checks.run("reversible")
    message = str(failure.value)
    assert message.startswith("1 of 3 revisions cannot be rolled back cleanly")
    assert f'revision 3 "index" ({folder / "V3__index.sql"})' in message
    assert "table public.notes: before it: absent" in message, message
