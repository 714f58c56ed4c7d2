"""A run whose template disappears under it (dropped by hand, or by a run that could not see
it was in use) rebuilds it once and goes on, instead of failing every later test with
"template database does not exist". The story with real separate runs is in
``suites/test_concurrent_runs.py``."""

from __future__ import annotations

import psycopg
from psycopg import sql

from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, our_branches
from tests.integration.support import MakeManager


def drop_by_hand(url: str, name: str) -> None:
    """What a person does in psql to a template database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def test_template_dropped_between_two_forks_is_rebuilt_once(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """The second fork finds its parent gone: the template is built again (one migration
    run more) under the same name, the fork succeeds, and later forks use it as before."""
    url = str(settings.url)
    manager = make_manager()
    with manager.branch(node_id="t::test_first") as first:
        assert first.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    template = manager.template()
    drop_by_hand(url, template)

    with manager.branch(node_id="t::test_second") as second:
        assert second.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    with manager.branch(node_id="t::test_third") as third:
        assert third.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    assert manager.template() == template
    assert (manager.stats.template_builds, alembic_project.runs) == (2, 2)
    assert our_branches(url, "template") == [template]
    assert our_branches(url) == []
