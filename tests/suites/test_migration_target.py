"""The user-visible path of "migrations land on the branch": a project whose ``env.py`` reads
``DATABASE_URL`` (the most common hand-written env.py) works unchanged, with no
configuration, while the developer's ``DATABASE_URL`` names a database the suite must never
touch."""

from __future__ import annotations

import pytest

from tests.helpers import AlembicProject, closed_port, our_branches, run_inner, write_tests

ENV_READS_DATABASE_URL = """
import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url, poolclass=pool.NullPool).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""


def test_env_py_reading_database_url_needs_no_configuration(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """The developer's ``DATABASE_URL`` points at a server that is not even running: the
    migrations run on the template anyway, the tests see migrated branches, and the tests'
    own code finds ``DATABASE_URL`` as the developer set it."""
    (alembic_project.root / "migrations" / "env.py").write_text(ENV_READS_DATABASE_URL)
    developer = f"postgresql+psycopg://dev@127.0.0.1:{closed_port()}/dev_db"
    write_tests(
        pytester,
        "test_app",
        f"""
        import os

        def test_branch_is_migrated(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
            assert os.environ["DATABASE_URL"] == {developer!r}
        """,
    )
    result = run_inner(pytester, embedded_url, DATABASE_URL=developer)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*templates: *1 built*"])
    assert len(our_branches(embedded_url, "template")) == 1
