"""The fixtures end to end: inner suites run in a subprocess against a real server."""

from __future__ import annotations

import json

import pytest
from conftest import AlembicProject, our_branches, run_inner, write_tests


def balanced(result: pytest.RunResult) -> int:
    """Branches created in the run (the warm pool forks a few ahead); all must be dropped."""
    import re

    match = re.search(r"branches: (\d+) created, (\d+) dropped, (\d+) kept", result.stdout.str())
    assert match, result.stdout.str()
    created, dropped, kept = map(int, match.groups())
    assert created == dropped + kept
    return created


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    from conftest import drop_ours

    drop_ours(embedded_url)


def test_three_scopes_isolation_and_teardown(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    write_tests(
        pytester,
        "test_scopes",
        """
        import json, pathlib
        seen = pathlib.Path("names.jsonl")

        def record(kind, info):
            with seen.open("a") as f:
                f.write(json.dumps([kind, info.name]) + "\\n")

        def test_write(db_branch, db_branch_info):
            record("function", db_branch_info)
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
            db_branch.execute("INSERT INTO widgets (name) VALUES ('mine')")
            db_branch.commit()

        def test_isolated(db_branch, db_branch_info):
            record("function", db_branch_info)
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

        def test_module_a(db_branch_module, db_branch_module_info):
            record("module", db_branch_module_info)
            db_branch_module.execute("INSERT INTO widgets (name) VALUES ('shared')")
            db_branch_module.commit()

        def test_module_b(db_branch_module, db_branch_module_info):
            record("module", db_branch_module_info)
            assert db_branch_module.execute("SELECT count(*) FROM widgets").fetchone()[0] == 2

        def test_session(db_branch_session, db_branch_session_info):
            record("session", db_branch_session_info)
            assert db_branch_session.info.dbname == db_branch_session_info.name

        def test_urls_and_engine(db_branch_info, db_branch_engine):
            import psycopg, sqlalchemy
            with psycopg.connect(db_branch_info.conninfo) as c:
                assert c.info.dbname == db_branch_info.name
            with psycopg.connect(db_branch_info.url) as c:
                assert c.info.dbname == db_branch_info.name
            with db_branch_engine.connect() as c:
                assert c.execute(sqlalchemy.text("SELECT current_database()")).scalar() == db_branch_info.name
            assert sqlalchemy.make_url(db_branch_info.sqlalchemy_url).database == db_branch_info.name
    """,
    )
    result = run_inner(pytester, server_url, "-v")
    result.assert_outcomes(passed=6)
    rows = [json.loads(line) for line in (pytester.path / "names.jsonl").read_text().splitlines()]
    names = {kind: {name for k, name in rows if k == kind} for kind in ("function", "module", "session")}
    assert len(names["function"]) == 2
    assert len(names["module"]) == 1
    assert len(names["session"]) == 1
    assert not (names["function"] & names["module"])
    assert balanced(result) >= 5
    assert our_branches(server_url) == []
    assert len(our_branches(server_url, "template")) == 1


def test_destructive_test_does_not_affect_the_next(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    write_tests(
        pytester,
        "test_destroy",
        """
        def test_1_destroy(db_branch):
            db_branch.execute("DROP TABLE widgets")
            db_branch.commit()

        def test_2_still_there(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    run_inner(pytester, server_url, "-p", "no:randomly").assert_outcomes(passed=2)


def test_keep_failed_prints_url_without_password(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_server, embedded_url: str
) -> None:
    from conftest import SECRET

    secret_url = embedded_server.__class__(
        host=embedded_server.host,
        port=embedded_server.port,
        user="secretive",
        password=SECRET,
        dbname="postgres",
    ).url()
    write_tests(
        pytester,
        "test_keep",
        """
        def test_ok(db_branch):
            pass

        def test_fails(db_branch):
            db_branch.execute("INSERT INTO widgets (name) VALUES ('evidence')")
            db_branch.commit()
            assert False, "look at the branch"
    """,
    )
    result = run_inner(pytester, secret_url, "--dbbranch-keep=failed")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*branch dbb-*-fails-* is kept for inspection: postgresql://secretive:***@127.0.0.1:*"]
    )
    assert SECRET not in result.stdout.str() + result.stderr.str()
    kept = our_branches(secret_url)
    assert len(kept) == 1 and "fails" in kept[0]
    import psycopg
    from psycopg import sql

    with psycopg.connect(embedded_server.conninfo(kept[0])) as conn:
        assert (
            conn.execute(sql.SQL("SELECT count(*) FROM widgets WHERE name = 'evidence'")).fetchone()[0] == 1
        )


def test_keep_always_and_never(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_k",
        """
        def test_a(db_branch):
            pass
    """,
    )
    run_inner(pytester, embedded_url, "--dbbranch-keep=always").assert_outcomes(passed=1)
    assert len(our_branches(embedded_url)) == 1
    from conftest import drop_ours

    drop_ours(embedded_url)
    run_inner(pytester, embedded_url, "--dbbranch-keep=never").assert_outcomes(passed=1)
    assert our_branches(embedded_url) == []


def test_xdist_many_tests_one_template_no_leftovers(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    # The machine's server keeps its data on the root disk (0.4-0.9 s a branch): fewer tests.
    count = 12 if ":5432/" in server_url else 40
    write_tests(
        pytester,
        "test_many",
        """
        import pytest

        @pytest.mark.parametrize("i", range(COUNT))
        def test_branch(db_branch, db_branch_info, i):
            with open("names.txt", "a") as f:
                f.write(db_branch_info.name + "\\n")
            db_branch.execute("INSERT INTO widgets (name) VALUES (%s)", (str(i),))
            db_branch.commit()
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 2
    """.replace("COUNT", str(count)),
    )
    result = run_inner(pytester, server_url, "-n", "2")
    result.assert_outcomes(passed=count)
    names = (pytester.path / "names.txt").read_text().split()
    assert len(names) == count and len(set(names)) == count
    assert {name.split("-")[2] for name in names} == {"gw0", "gw1"}
    assert alembic_project.runs == 1
    assert balanced(result) >= count
    result.stdout.fnmatch_lines(["*1 built*"])
    assert our_branches(server_url) == []


def test_template_reused_across_runs_and_rebuilt_on_change(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_r",
        """
        def test_a(db_branch):
            db_branch.execute("SELECT 1")
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)
    first_templates = our_branches(embedded_url, "template")
    assert alembic_project.runs == 1
    result = run_inner(pytester, embedded_url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*templates: 1 cache hits, 0 built*"])
    assert alembic_project.runs == 1
    # Changing a migration file changes the fingerprint: a new template replaces the old.
    alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN colour text")
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)
    assert alembic_project.runs == 2
    second_templates = our_branches(embedded_url, "template")
    assert len(second_templates) == 1 and second_templates != first_templates
    # --dbbranch-rebuild forces a build even though the fingerprint holds.
    run_inner(pytester, embedded_url, "--dbbranch-rebuild").assert_outcomes(passed=1)
    assert alembic_project.runs == 3
    assert our_branches(embedded_url, "template") == second_templates


def test_rebuild_once_per_run_under_xdist(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_x",
        """
        import pytest
        @pytest.mark.parametrize("i", range(6))
        def test_a(db_branch, i):
            pass
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=6)
    run_inner(pytester, embedded_url, "-n", "2", "--dbbranch-rebuild").assert_outcomes(passed=6)
    assert alembic_project.runs == 2


def test_half_built_template_after_crash_is_rebuilt(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    alembic_project.add(
        "r3",
        "r2",
        "ALTER TABLE widgets ADD COLUMN colour text",
    )
    # Kill the process from inside the migration, as a CI runner's OOM killer would.
    path = alembic_project.versions / "r3.py"
    path.write_text(
        path.read_text().replace(
            "def upgrade():",
            "def upgrade():\n    import os, signal\n"
            "    if os.environ.get('CRASH_IN_MIGRATION'):\n        os.kill(os.getpid(), signal.SIGKILL)\n",
        )
    )
    write_tests(
        pytester,
        "test_c",
        """
        def test_a(db_branch):
            db_branch.execute("SELECT colour FROM widgets")
    """,
    )
    crashed = run_inner(pytester, embedded_url, CRASH_IN_MIGRATION="1")
    assert crashed.ret not in (0, 1)
    assert len(our_branches(embedded_url, "template")) == 1  # the half-built one
    result = run_inner(pytester, embedded_url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 built*"])
    assert alembic_project.runs == 2


def test_marker_revision_and_upgrade(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    write_tests(
        pytester,
        "test_m",
        """
        import pytest

        @pytest.mark.dbbranch(revision="r1")
        def test_old(db_branch, db_branch_info):
            cols = {r[0] for r in db_branch.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name='widgets'")}
            assert cols == {"id", "name"}
            db_branch.execute("INSERT INTO widgets (name) VALUES ('old')")
            db_branch.commit()
            db_branch_info.upgrade("head")
            rows = db_branch.execute("SELECT name, size FROM widgets ORDER BY id").fetchall()
            assert rows == [("old", 1), ("seed", 1)]

        def test_head(db_branch):
            db_branch.execute("SELECT size FROM widgets")

        def test_upgrade_with_open_transaction(db_branch, db_branch_info):
            db_branch.execute("SELECT 1")
            with pytest.raises(Exception, match="commit or roll back"):
                db_branch_info.upgrade("head")
    """,
    )
    run_inner(pytester, server_url).assert_outcomes(passed=3)
    assert our_branches(server_url) == []


def test_branch_fixture_factory(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    pytester.makeconftest("""
        from pytest_dbbranch import branch_fixture
        legacy_db = branch_fixture(scope="module", revision="r1")
        empty_db = branch_fixture(alembic_ini="none")
    """)
    write_tests(
        pytester,
        "test_f",
        """
        def test_legacy(legacy_db):
            cols = {r[0] for r in legacy_db.connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name='widgets'")}
            assert cols == {"id", "name"}

        def test_both(legacy_db, db_branch_info):
            assert legacy_db.name != db_branch_info.name

        def test_empty(empty_db):
            n = empty_db.connection.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname='public'").fetchone()[0]
            assert n == 0
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=3)
    assert our_branches(embedded_url) == []


def test_hostile_test_ids_get_valid_branches(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_h",
        """
        import pytest

        @pytest.mark.parametrize("v", ["it's", 'a"b', "ünïcødé-名前", "x" * 300, "DROP DATABASE"])
        def test_odd(db_branch, db_branch_info, v):
            assert db_branch.info.dbname == db_branch_info.name
    """,
    )
    run_inner(pytester, embedded_url, "-n", "2").assert_outcomes(passed=5)
    assert our_branches(embedded_url) == []


def test_embedded_default_starts_and_stops_its_own_server(
    pytester: pytest.Pytester, alembic_project: AlembicProject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import pathlib

    base = pathlib.Path("/dev/shm") / f"dbbranch-default-{pytester.path.name}"
    write_tests(
        pytester,
        "test_e",
        """
        def test_a(db_branch, db_branch_info):
            assert db_branch_info.url.startswith("postgresql://postgres@127.0.0.1:")
            assert db_branch.execute("SHOW fsync").fetchone()[0] == "off"
    """,
    )
    try:
        result = run_inner(pytester, None, "-n", "2", DBBRANCH_EMBEDDED_DIR=str(base))
        result.assert_outcomes(passed=1)
        homes = list(base.glob("pg-*"))
        assert len(homes) == 1
        assert not (homes[0] / "data" / "postmaster.pid").exists(), "server left running"
        # The data directory survives, so the next run reuses the template.
        again = run_inner(pytester, None, DBBRANCH_EMBEDDED_DIR=str(base))
        again.assert_outcomes(passed=1)
        again.stdout.fnmatch_lines(["*1 cache hits, 0 built*"])
        assert alembic_project.runs == 1
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_plugin_option_group_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*pytest-dbbranch*", "*--dbbranch-url*", "*--dbbranch-keep*"])


def test_teardown_survives_what_a_test_does_to_its_connections(
    pytester: pytest.Pytester, alembic_project: AlembicProject, server_url: str
) -> None:
    write_tests(
        pytester,
        "test_rude",
        """
        import psycopg

        leaked = []

        def test_open_transaction_and_extra_connections(db_branch, db_branch_info):
            db_branch.execute("LOCK TABLE widgets IN ACCESS EXCLUSIVE MODE")
            for _ in range(3):
                extra = psycopg.connect(db_branch_info.conninfo)
                extra.execute("BEGIN")
                leaked.append(extra)  # never closed by the test

        def test_closes_its_own_connection(db_branch):
            db_branch.close()

        def test_breaks_its_connection(db_branch):
            pid = db_branch.info.backend_pid
            other = psycopg.connect(db_branch.info.dsn + " password=" + (db_branch.info.password or ""),
                                    autocommit=True)
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            other.close()

        def test_later_tests_are_fine(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    result = run_inner(pytester, server_url)
    result.assert_outcomes(passed=4)
    assert our_branches(server_url) == []


def test_unedited_env_py_migrates_the_branch(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """An env.py that ignores config.attributes builds its engine from sqlalchemy.url."""
    env = alembic_project.root / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace('connectable = config.attributes.get("connection")', "connectable = None")
    )
    write_tests(
        pytester,
        "test_u",
        """
        def test_a(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    run_inner(pytester, embedded_url).assert_outcomes(passed=1)
    assert alembic_project.runs == 1


def test_concurrent_runs_on_other_machines_build_the_template_once(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str, tmp_path_factory
) -> None:
    """Separate pytest processes with separate lock folders stand for CI machines sharing a
    server: only the advisory lock serialises them."""
    import subprocess
    import sys

    # A slow migration widens the window in which the runs race for the build.
    alembic_project.add("r3", "r2", "SELECT pg_sleep(0.5)")
    write_tests(
        pytester,
        "test_c",
        """
        import pytest
        @pytest.mark.parametrize("i", range(3))
        def test_a(db_branch, i):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    procs = []
    for shard in range(3):
        tmp = tmp_path_factory.mktemp(f"machine{shard}")
        env = dict(__import__("os").environ, TMPDIR=str(tmp))
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dbbranch-url", embedded_url]
        procs.append(subprocess.Popen(argv, cwd=pytester.path, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert alembic_project.runs == 1
    assert sum("1 built" in out for out in outputs) == 1
    assert our_branches(embedded_url) == []


def test_rollback_isolation_shares_one_branch_per_worker(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_rb",
        """
        import psycopg, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_writes_are_rolled_back(db_branch, db_branch_info, i):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
            db_branch.execute("INSERT INTO widgets (name) VALUES ('temp')")
            with open("hosts.txt", "a") as f:
                f.write(db_branch_info.name + "\\n")
            with open("pids.txt", "a") as f:
                f.write(f"{db_branch.info.backend_pid}\\n")

        def test_commit_is_refused(db_branch):
            with pytest.raises(psycopg.ProgrammingError):
                db_branch.commit()
    """,
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-isolation", "rollback", "-n", "2")
    result.assert_outcomes(passed=7)
    hosts = set((pytester.path / "hosts.txt").read_text().split())
    assert 1 <= len(hosts) <= 2, "one shared branch per worker"
    pids = set((pytester.path / "pids.txt").read_text().split())
    assert len(pids) <= 2, "one long-lived connection per worker, not one per test"
    assert balanced(result) == 2  # rollback: one host branch per worker, and no warm pool
    assert our_branches(embedded_url) == []


def test_warm_pool_hands_out_branches_of_the_right_template(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_pool",
        """
        import time, pytest

        @pytest.mark.parametrize("i", range(8))
        def test_head(db_branch, db_branch_info, i):
            time.sleep(0.05)  # time for the pool to fork ahead
            assert "test-head" in db_branch_info.name
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
            db_branch.execute("DELETE FROM widgets")
            db_branch.commit()

        @pytest.mark.dbbranch(revision="r1")
        def test_old_revision_in_between(db_branch):
            cols = {r[0] for r in db_branch.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'")}
            assert cols == {"id", "name"}

        @pytest.mark.parametrize("i", range(4))
        def test_head_again(db_branch, i):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    """,
    )
    result = run_inner(pytester, embedded_url, "--dbbranch-pool-size", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=13)
    result.stdout.fnmatch_lines(["*warm pool: * of 13 branches ready*"])
    import re

    hits = int(re.search(r"warm pool: (\d+) of", result.stdout.str()).group(1))  # type: ignore[union-attr]
    assert hits >= 8
    balanced(result)
    assert our_branches(embedded_url) == []
    off = run_inner(pytester, embedded_url, "--dbbranch-pool-size", "0")
    off.assert_outcomes(passed=13)
    assert "warm pool" not in off.stdout.str()
