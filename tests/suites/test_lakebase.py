"""The Lakebase backend through the real databricks-sdk client, in inner runs against the
emulator (HTTP API backed by the embedded PostgreSQL, a wire proxy checking OAuth-style
database credentials over TLS). Faults, refusals and credentials are tested in process
(``tests/integration``); here are what xdist and a user's suite add."""

from __future__ import annotations

import psycopg
import pytest

from pytest_dbbranch.emulator import LakebaseEmulator
from tests.helpers import AlembicProject, run_inner, write_tests

PROJECT = "demo"


def branch_ids(emulator: LakebaseEmulator, prefix: str) -> list[str]:
    return [
        b["name"].rsplit("/", 1)[-1]
        for b in emulator.branches(PROJECT)
        if b["name"].rsplit("/", 1)[-1].startswith(prefix)
    ]


SCOPES = """
    import pytest

    def test_function(db_branch):
        assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
        db_branch.execute("DELETE FROM customers")
        db_branch.commit()
        assert db_branch.pgconn.ssl_in_use

    def test_function_isolated(db_branch):
        assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50

    def test_module(db_branch_module):
        assert db_branch_module.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

    def test_session(db_branch_session, db_branch_session_info):
        assert db_branch_session_info.display_url.startswith("postgresql://alice%40example.com:***@127.0.0.1:")
        assert db_branch_session.pgconn.ssl_in_use

    @pytest.mark.parametrize("i", range(4))
    def test_many(db_branch, i):
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
"""


def test_scopes_with_two_workers(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    """Function branches are isolated, module and session ones work, over TLS with the
    password hidden; two xdist workers share one template built once; every branch is
    deleted with its backing database; the production branch is untouched."""
    write_tests(pytester, "test_scopes", SCOPES)
    result = run_inner(pytester, None, "-n", "2", **lakebase_env)
    result.assert_outcomes(passed=8)
    assert alembic_project.runs == 1
    assert len(branch_ids(emulator, "dbbt-")) == 1
    assert branch_ids(emulator, "dbb-") == []
    assert any(agent.startswith("pytest-dbbranch/") for agent in emulator.user_agents())
    # Deleted branches leave no backing database behind (the plugin's tag must not hide
    # them from the emulator's cleanup).
    live = {emulator.database_of(PROJECT, b["name"].rsplit("/", 1)[-1]) for b in emulator.branches(PROJECT)}
    with psycopg.connect(emulator.backing.conninfo(), autocommit=True) as conn:
        prefix = f"lb\\_{PROJECT}\\_%"
        backing = {
            r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix,))
        }
    assert backing == live
    # The production branch is untouched: still 50 customers, no migrations.
    production = emulator.database_of(PROJECT, "production")
    with psycopg.connect(emulator.backing.conninfo(production)) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
        assert conn.execute("SELECT to_regclass('widgets')").fetchone() == (None,)


def test_budget_smaller_than_the_number_of_tests(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    """With room for one test branch, two workers take turns: no create is refused for lack
    of room (each refusal would be retried, and counted below)."""
    write_tests(
        pytester,
        "test_b",
        """
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_a(db_branch, i):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    # Room for production, the template and one test branch.
    emulator.branch_limit = 3
    before = emulator.calls().get("POST create_branch", 0)
    result = run_inner(pytester, None, "-n", "2", **lakebase_env, DBBRANCH_LAKEBASE_BUDGET="1")
    result.assert_outcomes(passed=6)
    # One template plus one branch per test.
    assert emulator.calls().get("POST create_branch", 0) - before == 7
    assert branch_ids(emulator, "dbb-") == []


def test_emulator_fixture_for_users(pytester: pytest.Pytester, embedded_url: str) -> None:
    """``dbbranch_lakebase_emulator``: a user's own suite talks to it with databricks-sdk and
    logs in to a branch with a generated credential."""
    write_tests(
        pytester,
        "test_u",
        """
        import psycopg
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config

        def test_sdk_against_the_fixture(dbbranch_lakebase_emulator, monkeypatch, tmp_path):
            emulator = dbbranch_lakebase_emulator
            monkeypatch.setenv("HOME", str(tmp_path))
            w = WorkspaceClient(config=Config(host=emulator.url, token=emulator.token))
            branches = [b.name for b in w.postgres.list_branches("projects/demo")]
            assert branches == ["projects/demo/branches/production"]
            endpoint = next(iter(w.postgres.list_endpoints(branches[0])))
            token = w.postgres.generate_database_credential(endpoint=endpoint.name).token
            with psycopg.connect(host=endpoint.status.hosts.host, port=emulator.pg_port,
                                 dbname="databricks_postgres", user=emulator.user_name,
                                 password=token, sslmode="require") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                assert conn.pgconn.ssl_in_use
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)
