"""The Lakebase backend through the real databricks-sdk client, in inner runs against the
emulator (HTTP API backed by the embedded PostgreSQL, a wire proxy checking OAuth-style
database credentials over TLS). Faults, refusals and credentials are tested in process
(``tests/integration``); here are what xdist and a user's suite add."""

from __future__ import annotations

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
        assert db_branch_session_info.display_url.startswith("postgresql://ci-bot%40example.com:***@")
        assert db_branch_session.pgconn.ssl_in_use

    @pytest.mark.dbbranch(isolation="lakebase_branch")
    def test_own_lakebase_branch(db_branch):
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

    @pytest.mark.parametrize("i", range(4))
    def test_many(db_branch, i):
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
"""


def test_a_run_with_two_workers(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    """Two xdist workers on one run branch made by the controller: every scope works over
    TLS with the password hidden, the template is migrated once, the run's branch and the
    test's own Lakebase branch are deleted at the end, the template branch stays, and the
    run as a whole made few API calls."""
    token = emulator.add_identity("ci-bot@example.com")
    write_tests(pytester, "test_scopes", SCOPES)
    before = sum(emulator.calls().values())
    result = run_inner(pytester, None, "-n", "2", **{**lakebase_env, "DATABRICKS_TOKEN": token})
    result.assert_outcomes(passed=9)
    calls = sum(emulator.calls().values()) - before
    assert alembic_project.runs == 1
    assert branch_ids(emulator, "dbbl-") and branch_ids(emulator, "dbbr-") == []
    assert branch_ids(emulator, "dbb-") == []
    assert any(agent.startswith("pytest-dbbranch/") for agent in emulator.user_agents())
    # Template branch (create, poll, endpoint, credential, marks), run branch, one own
    # branch (about 5), credentials per process, heartbeat: far from 5 per test.
    assert calls < 60, emulator.calls()


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
