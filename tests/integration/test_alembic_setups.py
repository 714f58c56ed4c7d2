"""The shapes real Alembic set-ups have, each building a template in process.

Projects start from what ``alembic init`` writes (``InitializedProject``), with the README's
edits pasted in as printed, because that is where users start: the stock ``env.py`` calls
``fileConfig``, the async template makes its own event loop, pytest-alembic's guide calls
``.connect()`` on what it is handed, and many projects read their URL from the environment.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import MigrationError
from tests.helpers import (
    PYTEST_ALEMBIC_ONLINE,
    AlembicProject,
    InitializedProject,
    create_database,
    drop_database,
    readme_block,
)
from tests.integration.support import MakeManager


def migrated(manager: BranchManager, **overrides: str) -> tuple[list[str], str | None]:
    """The columns of ``widgets`` and the Alembic revision of a fresh branch."""
    settings = manager.settings.with_overrides("test", **overrides) if overrides else None
    with manager.branch(settings) as branch:
        conn = branch.connection
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'widgets' ORDER BY ordinal_position"
            )
        ]
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return columns, row[0] if row else None


def test_the_readme_env_py_edit_in_the_stock_env_py(make_manager: MakeManager, tmp_path: Path) -> None:
    """``run_migrations_online`` as the README prints it, in the file ``alembic init`` wrote:
    the template is migrated over the handed-over connection."""
    project = InitializedProject(tmp_path / "app")
    project.replace_online(readme_block("env_online.py"))
    project.add_widgets()
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    assert migrated(manager) == (["id", "name", "size"], "r2")


def test_script_location_is_relative_to_the_ini_wherever_pytest_starts(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``script_location = migrations`` names the folder beside the ini file, not one in the
    working directory: started from two other folders, the same template is found (same
    fingerprint), and built once."""
    ini = alembic_project.ini
    ini.write_text(ini.read_text().replace("%(here)s/migrations", "migrations"))
    names = []
    for folder in ("elsewhere", "elsewhere/deeper"):
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        manager = make_manager(alembic_ini=str(ini), root=alembic_project.root)
        assert migrated(manager) == (["id", "name", "size"], "r2")
        names.append(manager.template())
    assert names[0] == names[1]
    assert alembic_project.runs == 1


@pytest.mark.parametrize("beside_an_ini", [False, True], ids=["pyproject-only", "beside-a-logging-ini"])
def test_tool_alembic_in_pyproject(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    beside_an_ini: bool,
) -> None:
    """Alembic 1.16's ``[tool.alembic]``: found without a setting when no alembic.ini is there,
    or beside an ini that only configures logging; its relative ``script_location`` is the
    pyproject's folder's; and a change to the table is a change of fingerprint."""
    root = alembic_project.root
    alembic_project.ini.unlink()
    pyproject = root / "pyproject.toml"
    pyproject.write_text('[tool.alembic]\nscript_location = "migrations"\n')
    if beside_an_ini:
        alembic_project.ini.write_text(
            "[loggers]\nkeys = root\n[handlers]\nkeys =\n[formatters]\nkeys =\n"
            "[logger_root]\nlevel = WARNING\nhandlers =\n"
        )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    manager = make_manager(alembic_ini=None, root=root)
    assert migrated(manager) == (["id", "name", "size"], "r2")
    first = manager.template()
    pyproject.write_text(pyproject.read_text() + "truncate_slug_length = 30\n")
    assert make_manager(alembic_ini=None, root=root).template() != first


def test_pytest_alembic_env_py_and_its_engine_fixture(make_manager: MakeManager, tmp_path: Path) -> None:
    """An env.py written per pytest-alembic's guide builds the template (the plugin retries
    with an Engine); and the README's ``alembic_engine`` recipe, a blank branch's engine,
    takes pytest-alembic's own kind of run (the engine in ``attributes["connection"]``)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    project = InitializedProject(tmp_path / "app")
    project.replace_online(PYTEST_ALEMBIC_ONLINE)
    project.add_widgets()
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    assert migrated(manager) == (["id", "name", "size"], "r2")

    blank = manager.settings.with_overrides("alembic_db", source="empty", alembic_ini="none")
    with manager.branch(blank) as branch:
        engine = branch.engine()
        assert inspect(engine).get_table_names() == []
        config = Config(str(project.ini))
        config.attributes["connection"] = engine
        command.upgrade(config, "head")
        assert inspect(engine).get_table_names() == ["alembic_version", "widgets"]


@pytest.mark.parametrize("edited", [False, True], ids=["as-generated", "readme-edit"])
def test_async_env_py_from_alembic_init(make_manager: MakeManager, tmp_path: Path, edited: bool) -> None:
    """``alembic init -t async`` with ``postgresql+psycopg://``: as generated (its own async
    engine on the branch's URL) and with the README's async edit (the handed-over connection,
    no event loop of its own). The template imports SQLAlchemy's asyncio, hence greenlet."""
    pytest.importorskip("greenlet", reason="needs greenlet: pip install -e '.[test]'")
    project = InitializedProject(tmp_path / "app", template="async")
    if edited:
        project.replace_online(readme_block("env_async_online.py"))
    project.add_widgets()
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    assert migrated(manager) == (["id", "name", "size"], "r2")


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_async_env_py_with_an_async_only_driver(
    make_manager: MakeManager, tmp_path: Path, driver: str
) -> None:
    """The async template with an async-only driver in ``sqlalchemy.url``, as the Alembic and
    SQLAlchemy docs write it (``postgresql+asyncpg://``; psycopg's explicit
    ``postgresql+psycopg_async://``). Fails today: the plugin opens its own connection
    with a sync engine of that driver (MissingGreenlet) before env.py runs, and blames the
    migration."""
    pytest.importorskip("greenlet", reason="needs greenlet: pip install -e '.[test]'")
    if driver == "asyncpg":
        pytest.importorskip("asyncpg", reason="asyncpg is not installed")
    project = InitializedProject(
        tmp_path / "app", template="async", url=f"postgresql+{driver}://nobody@nowhere/none"
    )
    project.add_widgets()
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    assert migrated(manager) == (["id", "name", "size"], "r2")


def test_file_config_leaves_the_applications_logging_alone(
    make_manager: MakeManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stock env.py calls ``fileConfig``, which disables every existing logger and puts a
    handler on the root: after a template build the application's logger still logs, caplog
    still sees it, and the root logger has the handlers it had."""
    project = InitializedProject(tmp_path / "app")
    project.add_widgets()
    app = logging.getLogger("shop.service")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    assert migrated(manager) == (["id", "name", "size"], "r2")
    assert not app.disabled
    assert root.handlers == handlers and root.level == level
    with caplog.at_level(logging.INFO, logger="shop.service"):
        app.info("order placed")
    assert [r.getMessage() for r in caplog.records if r.name == "shop.service"] == ["order placed"]


@pytest.mark.parametrize("variable", ["DATABASE_URL", "APP_DB_URL"])
def test_env_py_reading_its_url_from_the_environment_migrates_the_branch(
    make_manager: MakeManager,
    clean_embedded: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    """The README's env.py lines with the variable pointing at a developer's database: the
    branch is migrated, that database is never touched, and the variable is as it was
    afterwards. Another name is picked up through ``dbbranch_url_env``."""
    project = InitializedProject(tmp_path / "app")
    project.after_config(readme_block("env_database_url.py").replace("DATABASE_URL", variable))
    project.add_widgets()
    dev = "dbbranch_tests_developer_db"
    create_database(clean_embedded, dev)
    try:
        dev_url = (
            ServerAddress.parse(clean_embedded).url(scheme="postgresql+psycopg").rsplit("/", 1)[0] + f"/{dev}"
        )
        monkeypatch.setenv(variable, dev_url)
        overrides = {} if variable == "DATABASE_URL" else {"url_env": variable}
        manager = make_manager(alembic_ini=str(project.ini), root=project.root, **overrides)
        assert migrated(manager) == (["id", "name", "size"], "r2")
        assert os.environ[variable] == dev_url
        with psycopg.connect(ServerAddress.parse(clean_embedded).conninfo(dev)) as conn:
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert tables == []
    finally:
        drop_database(clean_embedded, dev)


#: The application's models as they were before its first revision: the base schema came
#: from ``metadata.create_all`` (an enum type too, which create_all creates first).
BASE_MODELS = """
import enum

from sqlalchemy import Enum, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Status(enum.Enum):
    active = "active"
    closed = "closed"


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[Status] = mapped_column(Enum(Status, name="customer_status"))
"""


def test_a_base_schema_made_by_create_all(
    make_manager: MakeManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first revision alters a table ``create_all`` made: from ``empty`` the build fails
    at that revision (why the recipe exists); with the README's script's SQL file as the
    source, head and an older revision both build."""
    root = tmp_path / "app"
    (root / "myapp").mkdir(parents=True)
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "models.py").write_text(BASE_MODELS)
    project = AlembicProject(root)
    project.add("r1", None, "ALTER TABLE customers ADD COLUMN email text")
    project.add("r2", "r1", "UPDATE customers SET email = lower(full_name) || '@example.com'")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    exec(compile(readme_block("make_base_schema.py"), "README.md", "exec"), {"__name__": "readme"})
    sys.modules.pop("myapp.models", None)
    sys.modules.pop("myapp", None)

    with pytest.raises(MigrationError, match="revision r1"):
        make_manager(alembic_ini=str(project.ini), root=root, source="empty").template()
    manager = make_manager(alembic_ini=str(project.ini), root=root, source="base_schema.sql")
    for revision, version in (("head", "r2"), ("r1", "r1")):
        settings = manager.settings.with_overrides("test", revision=revision)
        with manager.branch(settings) as branch:
            conn = branch.connection
            columns = conn.execute(
                "SELECT string_agg(column_name, ' ' ORDER BY ordinal_position)"
                " FROM information_schema.columns WHERE table_name = 'customers'"
            ).fetchone()
            assert columns == ("id full_name status email",), revision
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (version,)
            labels = conn.execute("SELECT enum_range(NULL::customer_status)::text").fetchone()
            assert labels == ("{active,closed}",)


def test_progress_names_every_revision_with_the_stock_env_py(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    """The build's progress follows Alembic's announcements through a handler on its logger;
    the stock env.py's ``fileConfig`` resets the handlers of Alembic's loggers. Each
    revision must still get its line (today none does: the template shows as one silent step)."""
    from pytest_dbbranch.progress import Progress

    project = InitializedProject(tmp_path / "app")
    project.add_widgets()
    written: list[str] = []
    manager = make_manager(alembic_ini=str(project.ini), root=project.root)
    manager.progress = Progress(lambda text, end: written.append(text))
    manager.template()
    shown = "".join(written)
    assert "migrating to head: r1 (1 of 2)" in shown and "migrating to head: r2 (2 of 2)" in shown, shown
