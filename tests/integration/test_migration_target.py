"""Migrations land on the branch being built, or the build stops: never a migrated stranger
and a sealed, unmigrated template.

Alembic reports success for whatever database ``env.py`` connected to. Many ``env.py``
files read ``DATABASE_URL`` (or an application settings object) instead of the connection
the plugin hands over; with a developer's ``DATABASE_URL`` set, their migrations would run
on the developer's database. The plugin points the variables named by ``dbbranch_url_env``
at the branch while Alembic runs, puts them back afterwards, and checks the branch's own
version table once Alembic is done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import psycopg
import pytest

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import MigrationError
from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, create_database, drop_database, our_branches
from tests.integration.support import MakeManager

#: An env.py that never looks at ``config.attributes["connection"]``: it connects to the URL
#: that ``target_url()`` gives, and logs what it saw (the URL and the variables).
ENV_ELSEWHERE = """
import json, os
from pathlib import Path
from alembic import context
from sqlalchemy import create_engine, pool

ROOT = Path(__file__).resolve().parent.parent

def target_url():
{target_url}

url = target_url()
with open(ROOT / "env_seen.log", "a") as log:
    seen = {{name: os.environ.get(name) for name in ("DATABASE_URL", "APP_DB")}}
    log.write(json.dumps({{"url": url, **seen}}) + "\\n")
engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

READS_DATABASE_URL = '    return os.environ["DATABASE_URL"]'
READS_APP_SETTINGS = """\
    import importlib.util
    spec = importlib.util.spec_from_file_location("app_settings", ROOT / "app_settings.py")
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)
    return settings.DATABASE_URL"""
#: Uses the handed-over connection, until a later run finds ``elsewhere.txt``.
LATER_ELSEWHERE = """
import os
from pathlib import Path
from alembic import context
from sqlalchemy import create_engine, pool

elsewhere = Path(__file__).resolve().parent.parent / "elsewhere.txt"
if elsewhere.exists():
    connectable = create_engine(elsewhere.read_text().strip(), poolclass=pool.NullPool).connect()
else:
    connectable = context.config.attributes["connection"]
context.configure(connection=connectable, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

OTHER = "developer_database"


def write_env(project: AlembicProject, target_url: str) -> None:
    env = ENV_ELSEWHERE.format(target_url=target_url)
    (project.root / "migrations" / "env.py").write_text(env)


def seen_by_env(project: AlembicProject) -> list[dict[str, str | None]]:
    log = project.root / "env_seen.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def state(url: str, dbname: str) -> tuple[bool, tuple[str, ...]]:
    """Whether ``dbname`` has the widgets table, and the revisions its version table holds."""
    with psycopg.connect(ServerAddress.parse(url).conninfo(dbname)) as conn:
        row = conn.execute("SELECT to_regclass('widgets'), to_regclass('alembic_version')").fetchone()
        assert row is not None
        revisions = conn.execute("SELECT version_num FROM alembic_version").fetchall() if row[1] else []
    return row[0] is not None, tuple(sorted(r for (r,) in revisions))


@pytest.fixture
def other(settings: Settings) -> Iterator[str]:
    """The developer's own database on the same server, which migrations must not touch."""
    url = str(settings.url)
    create_database(url, OTHER, "CREATE TABLE personal (id int)")
    yield ServerAddress.parse(url).sqlalchemy_url(OTHER)
    drop_database(url, OTHER)


def test_env_py_reading_database_url_migrates_the_branch(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    settings: Settings,
    other: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no configuration, ``DATABASE_URL`` names the branch while env.py runs, keeping
    the scheme (driver) it had; the developer's database is untouched and the variable has
    its own value again afterwards."""
    url = str(settings.url)
    monkeypatch.setenv("DATABASE_URL", other)
    write_env(alembic_project, READS_DATABASE_URL)
    manager = make_manager()
    with manager.branch() as branch:
        assert state(url, branch.name) == (True, ("r2",))
    template = manager.template()
    assert [entry["url"] for entry in seen_by_env(alembic_project)] == [
        ServerAddress.parse(url).sqlalchemy_url(template)
    ]
    assert state(url, OTHER) == (False, ())
    assert os.environ["DATABASE_URL"] == other


def test_every_named_variable_points_at_the_branch_then_is_restored(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dbbranch_url_env = DATABASE_URL,APP_DB``: an unset variable gets the plain
    ``postgresql`` scheme and is unset again afterwards; a set one keeps its driver
    (``postgresql+asyncpg``) and gets its value back."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("APP_DB", "postgresql+asyncpg://app@prod-db/app")
    write_env(alembic_project, READS_DATABASE_URL)
    manager = make_manager(url_env="DATABASE_URL,APP_DB")
    template = manager.template()
    address = ServerAddress.parse(str(settings.url))
    assert seen_by_env(alembic_project) == [
        {
            "url": address.url(template),
            "DATABASE_URL": address.url(template),
            "APP_DB": address.url(template, scheme="postgresql+asyncpg"),
        }
    ]
    assert "DATABASE_URL" not in os.environ
    assert os.environ["APP_DB"] == "postgresql+asyncpg://app@prod-db/app"


def test_migrations_that_went_elsewhere_stop_the_build(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    settings: Settings,
    other: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the variable env.py reads left out of ``dbbranch_url_env`` (``none``, or another
    name), Alembic "succeeds" on the developer's database: the build fails naming the
    setting, nothing is sealed, and no later run is served an unmigrated template; a run that
    names the variable builds it."""
    url = str(settings.url)
    monkeypatch.setenv("DATABASE_URL", other)
    write_env(alembic_project, READS_DATABASE_URL)
    for url_env in ("none", "APP_DB", "none"):
        manager = make_manager(url_env=url_env)
        with pytest.raises(MigrationError) as failed:
            manager.create()
        message = str(failed.value)
        assert "is not at 'head'" in message and "holds no revision, expected r2" in message
        assert f"name it in dbbranch_url_env (now: {url_env})" in message
        assert "Check the other database: it was migrated." in message
        assert our_branches(url, "template") == [] and our_branches(url) == []
    assert state(url, OTHER) == (True, ("r2",)), "the migrations ran there: the message says to check it"

    with make_manager().branch() as branch:
        assert state(url, branch.name) == (True, ("r2",))


def test_url_from_an_application_settings_module_fails_clearly(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings, other: str
) -> None:
    """An env.py that imports the URL from the application's settings cannot be redirected
    by environment variables: the build stops and says to use the handed-over connection."""
    (alembic_project.root / "app_settings.py").write_text(f"DATABASE_URL = {other!r}\n")
    write_env(alembic_project, READS_APP_SETTINGS)
    with pytest.raises(MigrationError) as failed:
        make_manager().template()
    message = str(failed.value)
    assert "env.py most likely migrated another database" in message
    assert "if it reads an application settings object, use the handed-over connection" in message
    assert "config.attributes['connection']" in message
    assert our_branches(str(settings.url), "template") == []


def test_branch_upgrade_is_verified_too(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings, other: str
) -> None:
    """``Branch.upgrade()`` runs Alembic again, later: an env.py that ignores the handed-over
    connection by then migrates another database, and the test learns it from an error
    instead of asserting on a branch still at the old revision."""
    url = str(settings.url)
    (alembic_project.root / "migrations" / "env.py").write_text(LATER_ELSEWHERE)
    manager = make_manager(revision="r1")
    with manager.branch() as branch:
        assert state(url, branch.name) == (True, ("r1",))
        (alembic_project.root / "elsewhere.txt").write_text(other)
        with pytest.raises(
            MigrationError, match=rf"branch {branch.name} is not at 'head'.* holds r1, expected r2"
        ):
            branch.upgrade("head")
        assert state(url, branch.name) == (True, ("r1",))
        (alembic_project.root / "elsewhere.txt").unlink()
        branch.upgrade("head")
        assert state(url, branch.name) == (True, ("r2",))
    assert state(url, OTHER) == (True, ("r2",))
