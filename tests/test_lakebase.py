"""The Lakebase backend through the real databricks-sdk client, against the emulator.

Each inner run talks HTTP to ``LakebaseEmulator`` (backed by the embedded PostgreSQL) and
connects to branches through its wire proxy with OAuth-style tokens, as it would to Lakebase.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import AlembicProject, run_inner, write_tests
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator

PROJECT = "demo"


@pytest.fixture
def emulator(embedded_server: ServerAddress) -> Iterator[LakebaseEmulator]:
    source = "lakebase_prod_source"
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    with psycopg.connect(embedded_server.conninfo(source), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g")
    emu = LakebaseEmulator(embedded_server, branch_limit=10, operation_delay=0.02)
    emu.start()
    emu.create_project(PROJECT, source_database=source)
    try:
        yield emu
    finally:
        emu.stop()
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source)))


@pytest.fixture
def lakebase_env(
    emulator: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """Only the emulator's settings: no developer profile, no DATABRICKS_* from outside."""
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return {
        "DATABRICKS_HOST": emulator.url,
        "DATABRICKS_TOKEN": emulator.token,
        "DBBRANCH_LAKEBASE_PROJECT": PROJECT,
        "DBBRANCH_LAKEBASE_PORT": str(emulator.pg_port),
        "DBBRANCH_LAKEBASE_SSLMODE": "require",
    }


def live_test_branches(emulator: LakebaseEmulator) -> list[str]:
    return [
        b["name"].rsplit("/", 1)[-1]
        for b in emulator.branches(PROJECT)
        if b["name"].rsplit("/", 1)[-1].startswith("dbb-")
    ]


SCOPES = """
    import pathlib

    def test_function(db_branch, db_branch_info):
        assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
        db_branch.execute("DELETE FROM customers")
        db_branch.commit()
        assert db_branch.info.ssl_in_use if hasattr(db_branch.info, "ssl_in_use") else True

    def test_function_isolated(db_branch):
        assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50

    def test_module(db_branch_module):
        assert db_branch_module.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

    def test_session(db_branch_session, db_branch_session_info):
        assert db_branch_session_info.display_url.startswith("postgresql://alice%40example.com:***@127.0.0.1:")
"""


def test_three_scopes_on_lakebase(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_scopes", SCOPES)
    result = run_inner(pytester, None, **lakebase_env)
    result.assert_outcomes(passed=4)
    assert alembic_project.runs == 1
    assert any(agent.startswith("pytest-dbbranch/") for agent in emulator.user_agents())
    # Deleted branches leave no backing database behind (the plugin's tag must not hide
    # them from the emulator's cleanup).
    live = {emulator.database_of(PROJECT, b["name"].rsplit("/", 1)[-1]) for b in emulator.branches(PROJECT)}
    with psycopg.connect(emulator_backing(emulator).conninfo()) as conn:
        backing = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lb\\_%'")}
    assert backing == live
    assert live_test_branches(emulator) == []
    # The production branch is untouched: still 50 customers, no migrations.
    production = emulator.database_of(PROJECT, "production")
    backing = emulator_backing(emulator)
    with psycopg.connect(backing.conninfo(production)) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 50
        assert conn.execute("SELECT to_regclass('widgets')").fetchone()[0] is None


def emulator_backing(emulator: LakebaseEmulator) -> ServerAddress:
    return emulator.backing  # type: ignore[attr-defined,no-any-return]


def test_every_branch_has_a_ttl(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_t", "def test_a(db_branch):\n    pass\n")
    run_inner(
        pytester, None, "--dbbranch-keep=always", **lakebase_env, DBBRANCH_LAKEBASE_TTL="15m"
    ).assert_outcomes(passed=1)
    ours = [b for b in emulator.branches(PROJECT) if b["name"].rsplit("/", 1)[-1].startswith("dbb")]
    assert len(ours) == 2  # the kept test branch and the template
    for branch in ours:
        assert branch["spec"].get("ttl"), branch
        assert branch["status"].get("expire_time"), branch
    test_branch = next(b for b in ours if b["name"].rsplit("/", 1)[-1].startswith("dbb-"))
    assert test_branch["spec"]["ttl"] == "900s"


def test_template_shared_by_two_workers(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(
        pytester,
        "test_w",
        """
        import pytest
        @pytest.mark.parametrize("i", range(6))
        def test_a(db_branch, i):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    run_inner(pytester, None, "-n", "2", **lakebase_env).assert_outcomes(passed=6)
    assert alembic_project.runs == 1
    assert live_test_branches(emulator) == []
    templates = [b for b in emulator.branches(PROJECT) if b["name"].rsplit("/", 1)[-1].startswith("dbbt-")]
    assert len(templates) == 1


def test_budget_smaller_than_the_number_of_tests(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(
        pytester,
        "test_b",
        """
        import pytest, time
        @pytest.mark.parametrize("i", range(6))
        def test_a(db_branch, i):
            time.sleep(0.2)
    """,
    )
    # Room for production, the template and one test branch: a second concurrent branch
    # would be refused with RESOURCE_EXHAUSTED (and retried, which the count below shows).
    emulator.branch_limit = 3
    before = emulator.calls().get("POST create_branch", 0)
    result = run_inner(pytester, None, "-n", "2", **lakebase_env, DBBRANCH_LAKEBASE_BUDGET="1")
    result.assert_outcomes(passed=6)
    # One template plus one branch per test, and no create refused for lack of room.
    assert emulator.calls().get("POST create_branch", 0) - before == 7
    assert live_test_branches(emulator) == []


@pytest.mark.parametrize("isolation", ["clone", "rollback"])
def test_isolation_modes(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
    isolation: str,
) -> None:
    write_tests(
        pytester,
        "test_i",
        """
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_a(db_branch, i):
            assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50
            db_branch.execute("DELETE FROM customers")
    """,
    )
    before = emulator.calls().get("POST create_branch", 0)
    result = run_inner(pytester, None, **lakebase_env, DBBRANCH_ISOLATION=isolation)
    result.assert_outcomes(passed=4)
    # Template + one host branch: the tests themselves cost no Lakebase branch.
    assert emulator.calls().get("POST create_branch", 0) - before == 2
    assert live_test_branches(emulator) == []


def test_credentials_are_reused_then_refreshed(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_server: ServerAddress,
    lakebase_env: dict[str, str],
) -> None:
    emu = LakebaseEmulator(embedded_server, credential_lifetime=3.0, operation_delay=0.01)
    emu.start()
    try:
        emu.create_project(PROJECT)
        env = dict(lakebase_env, DATABRICKS_HOST=emu.url, DBBRANCH_LAKEBASE_PORT=str(emu.pg_port))
        write_tests(
            pytester,
            "test_c",
            """
            import time

            def test_reuse(db_branch_session_info):
                for _ in range(3):
                    db_branch_session_info.connect().close()

            def test_after_expiry(db_branch_session_info):
                time.sleep(3.2)
                with db_branch_session_info.connect() as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
        """,
        )
        result = run_inner(pytester, None, **env)
        result.assert_outcomes(passed=2)
        credentials = emu.calls().get("POST generate_database_credential", 0)
        assert 2 <= credentials <= 4, emu.calls()
        assert emu.token not in result.stdout.str()
    finally:
        emu.stop()


def test_expired_database_token_is_refreshed_on_login_failure(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    """A token revoked early (expiry is checked only at login) is replaced, not fatal."""
    write_tests(pytester, "test_e", "def test_a(db_branch):\n    db_branch.execute('SELECT 1')\n")
    run_inner(pytester, None, **lakebase_env).assert_outcomes(passed=1)
    emulator.expire_credentials()
    run_inner(pytester, None, **lakebase_env).assert_outcomes(passed=1)


def _clean_failure(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret != 0
    result.stdout.fnmatch_lines(list(patterns))
    assert "Traceback" not in result.stdout.str()


def test_project_not_found(
    pytester: pytest.Pytester, alembic_project: AlembicProject, lakebase_env: dict[str, str]
) -> None:
    write_tests(pytester, "test_p", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, None, **dict(lakebase_env, DBBRANCH_LAKEBASE_PROJECT="nope"))
    _clean_failure(result, "*Lakebase project projects/nope not found (dbbranch_lakebase_project)*")


def test_revoked_token(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    emulator.revoke_pat("Token expired")
    write_tests(pytester, "test_r", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, None, **lakebase_env)
    _clean_failure(result, "*Lakebase rejected the credentials*401*Token expired*refresh it*")
    assert emulator.token not in result.stdout.str()


def test_transient_faults_are_retried(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_f", "def test_a(db_branch):\n    db_branch.execute('SELECT 1')\n")
    emulator.inject(times=2, status=503, error_code="TEMPORARILY_UNAVAILABLE", method="POST")
    emulator.inject(
        times=1, status=429, error_code="RESOURCE_EXHAUSTED", retry_after=0.2, path_contains="/branches"
    )
    emulator.inject(times=1, drop_connection=True, path_contains="/operations/")
    emulator.inject(times=2, delay=0.5, path_contains="/endpoints")
    emulator.inject(
        times=1,
        operation_error=True,
        error_code="RESOURCE_EXHAUSTED",
        message="too many branches",
        method="POST",
        path_contains="/branches",
    )
    run_inner(pytester, None, **lakebase_env).assert_outcomes(passed=1)
    assert live_test_branches(emulator) == []


def test_failed_operation_is_a_clear_error_and_leaves_nothing(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_f", "def test_a(db_branch):\n    pass\n")
    emulator.inject(
        times=1,
        operation_error=True,
        error_code="INTERNAL_ERROR",
        message="disk on fire",
        method="POST",
        path_contains="/branches",
    )
    result = run_inner(pytester, None, **lakebase_env)
    _clean_failure(result, "*Lakebase create branch dbbt-* failed: ?INTERNAL_ERROR? disk on fire*")
    assert [b for b in emulator.branches(PROJECT) if "dbb" in b["name"]] == []


def test_ttl_the_service_rejects(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_t", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, None, **lakebase_env, DBBRANCH_LAKEBASE_TEMPLATE_TTL="90d")
    _clean_failure(result, "*Lakebase rejected the request to create branch dbbt-*")


def test_budget_of_zero_is_refused(
    pytester: pytest.Pytester, alembic_project: AlembicProject, lakebase_env: dict[str, str]
) -> None:
    write_tests(pytester, "test_z", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, None, **lakebase_env, DBBRANCH_LAKEBASE_BUDGET="0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*DBBRANCH_LAKEBASE_BUDGET: must be at least 1*"])


def test_default_and_protected_branches_are_never_deleted(
    emulator: LakebaseEmulator, lakebase_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pytest_dbbranch.backends.lakebase import LakebaseBackend
    from pytest_dbbranch.errors import NotOursError
    from pytest_dbbranch.settings import resolve

    for key, value in lakebase_env.items():
        monkeypatch.setenv(key, value)
    backend = LakebaseBackend(resolve(env=os.environ, root=tmp_path), lock_root=tmp_path)
    with pytest.raises(NotOursError, match="default or a protected branch"):
        backend.drop("production")
    assert emulator.database_of(PROJECT, "production")


def test_permission_denied_is_a_clear_error(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    emulator.inject(
        times=1,
        status=403,
        error_code="PERMISSION_DENIED",
        message="no CAN MANAGE",
        method="POST",
        path_contains="/branches",
    )
    write_tests(pytester, "test_d", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, None, **lakebase_env)
    _clean_failure(
        result, "*Lakebase refused to create branch dbbt-* (403: no CAN MANAGE)*CAN MANAGE on projects/demo*"
    )
    assert [b for b in emulator.branches(PROJECT) if "dbb" in b["name"]] == []


def test_emulator_fixture_for_users(pytester: pytest.Pytester, embedded_url: str) -> None:
    write_tests(
        pytester,
        "test_u",
        """
        import psycopg
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config

        def test_sdk_against_the_fixture(lakebase_emulator, monkeypatch, tmp_path):
            monkeypatch.setenv("HOME", str(tmp_path))
            w = WorkspaceClient(config=Config(host=lakebase_emulator.url, token=lakebase_emulator.token))
            branches = [b.name for b in w.postgres.list_branches("projects/demo")]
            assert branches == ["projects/demo/branches/production"]
            endpoint = next(iter(w.postgres.list_endpoints(branches[0])))
            token = w.postgres.generate_database_credential(endpoint=endpoint.name).token
            with psycopg.connect(host=endpoint.status.hosts.host, port=lakebase_emulator.pg_port,
                                 dbname="databricks_postgres", user=lakebase_emulator.user_name,
                                 password=token, sslmode="require") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)


def test_migration_checks_and_diff_on_lakebase(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    write_tests(pytester, "test_app", "def test_app(db_branch):\n    pass\n")
    result = run_inner(
        pytester, None, "--dbbranch-check-migrations", "--dbbranch-schema-diff=d.md", "-rA", **lakebase_env
    )
    result.assert_outcomes(passed=5)
    diff = (pytester.path / "d.md").read_text()
    assert "### `public.widgets`" in diff and "public.customers" not in diff
    assert live_test_branches(emulator) == []
