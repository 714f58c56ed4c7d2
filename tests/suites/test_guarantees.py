"""The promises in the README's "Guarantees" section, each shown by an inner run that breaks
with it: the source untouched, crash safety, parallel load, faults in the middle, secrets
never printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch import names
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import (
    SECRET,
    AlembicProject,
    assert_clean_failure,
    copy_example,
    databases,
    drop_ours,
    our_branches,
    pg_dump,
    restore_snapshot,
    run_inner,
    summary_counts,
    write_tests,
)
from tests.suites.support import ALL_CHECKS, check_outcomes, dbbranch, dbbranch_json, readme_example_diff

PROD = "prod_inventory_snapshot"


@pytest.fixture
def production(embedded_server: ServerAddress) -> Iterator[str]:
    """The example's snapshot restored into an ordinary database: the user's production copy."""
    restore_snapshot(embedded_server, PROD)
    yield PROD
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PROD)))


def contents(url: str, dbname: str) -> tuple[bytes, dict[str, str]]:
    """A schema+data dump, plus an md5 of every table's rows in a fixed order."""
    with psycopg.connect(ServerAddress.parse(url).conninfo(dbname)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
        ]
        rows = {}
        for table in tables:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.SQL(table))
            row = conn.execute(query).fetchone()
            assert row is not None
            rows[table] = row[0]
    return pg_dump(url, dbname), rows


# -- 1. the source is never written --------------------------------------------------------


def test_source_database_untouched_by_a_full_run(
    pytester: pytest.Pytester, production: str, embedded_url: str
) -> None:
    """The example suite (destructive tests included) with xdist, the five migration checks and
    the schema diff, all from a source database: the source's dump and rows are identical
    afterwards. The same run shows the checks as ordinary passing items and the diff file."""
    before = contents(embedded_url, production)
    assert before[1], "the snapshot has tables"
    copy_example(pytester.path)
    result = run_inner(
        pytester,
        embedded_url,
        "-n",
        "2",
        "--dist",
        "loadscope",
        "-rA",
        "--dbbranch-check-migrations",
        "-o",
        "dbbranch_models=inventory.models:metadata",
        "--dbbranch-schema-diff=out/schema.md",
        DBBRANCH_SOURCE=production,
    )
    assert result.ret == 0, result.stdout.str()
    assert check_outcomes(result) == dict.fromkeys(ALL_CHECKS, "PASSED")
    result.stdout.fnmatch_lines(["*schema diff (6 changes, 5 breaking) -> */out/schema.md"])
    assert (pytester.path / "out" / "schema.md").read_text().strip() == readme_example_diff().strip()
    assert contents(embedded_url, production) == before
    assert our_branches(embedded_url) == []


def test_source_branch_untouched_on_the_emulator(
    pytester: pytest.Pytester,
    production: str,
    embedded_server: ServerAddress,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The same on Lakebase: the source branch is only branched from; the migration checks and
    the schema diff work there too and give the same diff."""
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    url = embedded_server.url()
    with LakebaseEmulator(embedded_server, timing="fast") as emu:
        emu.create_project("inventory", source_database=production)
        ci_token = emu.add_identity("ci-bot@example.com")
        before = _production_contents(emu, "inventory")
        copy_example(pytester.path)
        result = run_inner(
            pytester,
            None,
            "-rA",
            "--dbbranch-check-migrations",
            "-o",
            "dbbranch_models=inventory.models:metadata",
            "--dbbranch-schema-diff=out/schema.md",
            DATABRICKS_HOST=emu.url,
            DATABRICKS_TOKEN=ci_token,
            DBBRANCH_LAKEBASE_PROJECT="inventory",
            DBBRANCH_LAKEBASE_PORT=str(emu.pg_port),
            DBBRANCH_SOURCE="production",
        )
        assert result.ret == 0, result.stdout.str()
        assert check_outcomes(result) == dict.fromkeys(ALL_CHECKS, "PASSED")
        assert (pytester.path / "out" / "schema.md").read_text().strip() == readme_example_diff().strip()
        assert _production_contents(emu, "inventory") == before
        kinds = [names.generated_kind(b["branch_id"]) for b in emu.branches("inventory")]
        assert "branch" not in kinds and "run" not in kinds
    assert contents(url, production)[1] == before[1]


def _production_contents(emu: LakebaseEmulator, project: str) -> tuple[bytes, dict[str, str]]:
    """Production's dump and rows as its owner reads them (pg_dump through the plugin's TLS
    relay: the embedded client programs have no SSL)."""
    from pytest_dbbranch.branching.tls_relay import tls_relay

    with tls_relay(ServerAddress.parse(_owner_url(emu, project))) as local:
        return contents(local.url(), "databricks_postgres")


def _owner_url(emu: LakebaseEmulator, project: str) -> str:
    """Production as its owner sees it: the endpoint's host, a fresh credential."""
    from databricks.sdk import WorkspaceClient

    client = WorkspaceClient(host=emu.url, token=emu.token)
    endpoint = client.postgres.get_endpoint(f"projects/{project}/branches/production/endpoints/primary")
    token = client.postgres.generate_database_credential(endpoint=endpoint.name).token
    return ServerAddress(
        host=endpoint.status.hosts.host,
        port=emu.pg_port,
        user=emu.user_name,
        password=token,
        dbname="databricks_postgres",
        options=(("sslmode", "require"),),
    ).url()


# -- 2. crash safety -----------------------------------------------------------------------

KILLED_IN_A_TEST = """
    import os, signal

    def test_a_fails_and_is_kept(db_branch):
        assert False

    def test_b_dies_with_live_branches(db_branch_session, db_branch):
        db_branch.execute("SELECT 1")
        os.kill(os.getpid(), signal.SIGKILL)
"""

KILLED_WORKER = """
    import os, signal, pytest

    @pytest.mark.parametrize("i", range(8))
    def test_a(db_branch, db_branch_session, i):
        if i == 3 and not os.path.exists("killed"):
            open("killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
"""

KILLED_IN_TEARDOWN = """
    import os, signal, pytest

    @pytest.fixture
    def dies_in_teardown(db_branch):
        yield db_branch
        os.kill(os.getpid(), signal.SIGKILL)

    def test_a(dies_in_teardown):
        dies_in_teardown.execute("SELECT 1")
"""


@pytest.fixture
def lookalikes(embedded_url: str) -> Iterator[list[str]]:
    """Databases that look like ours but are not: never touched."""
    names = {"dbb-lookalike-m-f-test-0123456789": None, "dbbt-someone-else-0123": '{"tool":"other"}'}
    with psycopg.connect(embedded_url, autocommit=True) as conn:
        for name, comment in names.items():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if comment:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment))
                )
    yield list(names)
    with psycopg.connect(embedded_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _only(pytester: pytest.Pytester, name: str, body: str) -> None:
    """Make ``name`` the inner suite's only test module."""
    for path in pytester.path.glob("test_*.py"):
        path.unlink()
    write_tests(pytester, name, body)


def test_killed_runs_leave_nothing_for_long(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
    lookalikes: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``kill -9`` of a run while branches are live, of one xdist worker, and during teardown:
    each next run succeeds without manual steps and reaps what the dead run left (``dbbranch
    gc`` does it from a shell); a kept branch stays until it is old; look-alike databases
    that are not ours survive everything."""

    def ours_not_kept() -> set[str]:
        return set(our_branches(embedded_url)) - set(kept)

    # A run killed in a test, after keeping a failed test's branch.
    _only(pytester, "test_k", KILLED_IN_A_TEST)
    assert run_inner(pytester, embedded_url, "--dbbranch-keep=failed", "-p", "no:randomly").ret not in (0, 1)
    listing = dbbranch_json(capsys, "list", "--url", embedded_url)
    kept = [row["name"] for row in listing if row["kind"] == "branch" and row["kept"]]
    assert len(kept) == 1
    left = ours_not_kept()
    assert len(left) >= 2  # session + function branch, and what the warm pool had forked ahead

    # `dbbranch gc`: a dry run names them and deletes nothing; then they go, the kept stays.
    report = dbbranch_json(capsys, "gc", "--url", embedded_url, "--dry-run")
    assert {c["name"] for c in report["candidates"]} == left
    assert {c["cause"] for c in report["candidates"]} == {"dead-run"}
    assert all("is gone" in c["reason"] for c in report["candidates"])
    assert ours_not_kept() == left, "the dry run deleted something"
    code, _out, err = dbbranch(capsys, "gc", "--url", embedded_url)
    assert code == 0, err
    assert our_branches(embedded_url) == kept
    assert len(our_branches(embedded_url, "template")) == 1, "the live project's template stays"

    # One xdist worker killed: its test fails, the others pass, the template is reused.
    _only(pytester, "test_w", KILLED_WORKER)
    result = run_inner(pytester, embedded_url, "-n", "2")
    assert "replacing crashed worker" in result.stdout.str()
    result.assert_outcomes(passed=7, failed=1)
    assert alembic_project.runs == 1
    left_by_worker = ours_not_kept()
    assert len(left_by_worker) >= 2  # the dead worker's session and function branches

    # Killed during teardown; its start reaped what the dead worker left.
    _only(pytester, "test_t", KILLED_IN_TEARDOWN)
    assert run_inner(pytester, embedded_url).ret not in (0, 1)
    left_in_teardown = ours_not_kept()
    assert left_in_teardown and not left_in_teardown & left_by_worker

    # The next run reaps those too, and says so.
    _only(pytester, "test_ok", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, embedded_url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{len(left_in_teardown)} left by dead runs reaped*"])
    assert our_branches(embedded_url) == kept

    # A kept branch goes once it is older than --older-than (the runs above took seconds).
    ages = {row["name"]: row["age_seconds"] for row in dbbranch_json(capsys, "list", "--url", embedded_url)}
    assert ages[kept[0]] > 1
    code, _out, err = dbbranch(capsys, "gc", "--url", embedded_url, "--older-than", "1s")
    assert code == 0, err
    assert our_branches(embedded_url) == []
    assert set(lookalikes) <= set(databases(embedded_url))


def test_ctrl_c_while_branches_are_live(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """SIGINT in the middle of a test: pytest's teardown still drops every branch."""
    write_tests(
        pytester,
        "test_c",
        """
        import signal

        def test_waits_for_ctrl_c(db_branch, db_branch_session):
            print("dbbranch-test-started", flush=True)
            signal.pause()
    """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "--dbbranch-url", embedded_url],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # If the inner run hangs, killing it ends the read below.
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks until the test runs (or the run ends)
            seen.append(line)
            if "dbbranch-test-started" in line:
                break
        else:
            pytest.fail("the inner test never started:\n" + "".join(seen))
        proc.send_signal(signal.SIGINT)
        output = "".join(seen) + proc.communicate(timeout=60)[0]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, output
    assert "KeyboardInterrupt" in output
    assert our_branches(embedded_url) == [], "teardown ran on Ctrl-C"


# -- 3. parallel load ----------------------------------------------------------------------

LOAD = """
    import pytest

    def claim(name):
        open(f"names-{name}", "x").close()  # "x": fails if the name was used before

    @pytest.mark.parametrize("i", range(COUNT))
    def test_load(db_branch, db_branch_info, i):
        claim(db_branch_info.name)
        db_branch.execute("INSERT INTO widgets (name) VALUES ('x')")
        db_branch.commit()
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 2

    @pytest.mark.parametrize("v", ["it's", 'a"b', "ünïcødé-名前", "x" * 300, "DROP DATABASE"])
    def test_hostile_ids(db_branch, db_branch_info, v):
        claim(db_branch_info.name)
        assert db_branch.info.dbname == db_branch_info.name
"""

COLLISION = ("55006", "accessed by other users")


def test_xdist_runs_repeated(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """Many tests with ``-n 2``, twice: no branch name used twice (hostile test ids included),
    both workers busy, the template built once, no SQLSTATE 55006, nothing left; then
    ``--dbbranch-rebuild`` under xdist builds once per run, not once per worker."""
    write_tests(pytester, "test_load", LOAD.replace("COUNT", "60"))
    for built in ("1 built", "0 built"):
        result = run_inner(pytester, embedded_url, "-n", "2")
        result.assert_outcomes(passed=65)
        result.stdout.fnmatch_lines([f"*templates: *{built}*"])
        assert not any(marker in result.stdout.str() for marker in COLLISION)
        assert summary_counts(result)[0] >= 65
        assert our_branches(embedded_url) == []
    names = [path.name.removeprefix("names-") for path in pytester.path.glob("names-*")]
    assert len(names) == 130
    assert {name.split("-")[2] for name in names} == {"gw0", "gw1"}
    assert alembic_project.runs == 1

    result = run_inner(pytester, embedded_url, "-n", "2", "--dbbranch-rebuild", "-k", "hostile")
    result.assert_outcomes(passed=5)
    assert alembic_project.runs == 2
    assert len(our_branches(embedded_url, "template")) == 1
    assert our_branches(embedded_url) == []


def test_ci_shards_started_at_once(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Three ``pytest -n 2`` processes started together, each with its own lock folder (CI
    machines sharing a server: only the advisory lock serialises them), and a slow migration
    to widen the race: one builds the template, all pass, no collision, nothing left."""
    alembic_project.add("r3", "r2", "SELECT pg_sleep(0.3)", undo=("SELECT 1",))
    write_tests(pytester, "test_load", LOAD.replace("COUNT", "15"))
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--dbbranch-url",
        embedded_url,
    ]
    procs = [
        subprocess.Popen(
            argv,
            cwd=pytester.path,
            env=dict(os.environ, TMPDIR=str(tmp_path_factory.mktemp(f"machine{shard}"))),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for shard in range(3)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert all("20 passed" in out for out in outputs)
    assert not any(marker in out for out in outputs for marker in COLLISION)
    assert sum("1 built" in out for out in outputs) == 1
    assert alembic_project.runs == 1
    assert len(list(pytester.path.glob("names-*"))) == 60
    assert our_branches(embedded_url) == []


# -- 4. faults in the middle ---------------------------------------------------------------


def test_server_restart_during_a_run(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded: EmbeddedServer, embedded_url: str
) -> None:
    """The server restarts under a running suite: later tests get working branches and the
    run still cleans up."""
    write_tests(
        pytester,
        "test_r",
        """
        import os
        from pytest_dbbranch.server.embedded import EmbeddedServer

        def test_1_before(db_branch):
            db_branch.execute("SELECT 1")

        def test_2_restart(db_branch):
            EmbeddedServer(os.environ["OUTER_EMBEDDED_BASE"]).restart()

        def test_3_after(db_branch):
            assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1

        def test_4_after(db_branch_module):
            assert db_branch_module.execute("SELECT 1").fetchone() == (1,)
    """,
    )
    base = str(embedded.home.parent)
    result = run_inner(pytester, embedded_url, "-p", "no:randomly", OUTER_EMBEDDED_BASE=base)
    result.assert_outcomes(passed=4)
    assert our_branches(embedded_url) == []


# -- 5. secrets ------------------------------------------------------------------------------


@pytest.fixture
def secret_url(embedded_server: ServerAddress) -> Iterator[str]:
    """A role with a password on the embedded server; what it creates is dropped afterwards."""
    url = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    ).url()
    drop_ours(url)
    yield url
    drop_ours(url)


SECRETS = """
    import logging

    def test_ok(db_branch):
        pass

    def test_fails(db_branch, db_branch_info):
        logging.getLogger("app").warning("connected to %s", db_branch_info.display_url)
        db_branch.execute("INSERT INTO widgets (name) VALUES ('evidence')")
        db_branch.commit()
        assert False, repr(db_branch_info)
"""


def test_failures_are_clear_and_never_print_the_password(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    secret_url: str,
    embedded_server: ServerAddress,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Everything a failing run prints at full verbosity: a migration error names the
    revision, file, statement and database error (no traceback, built once, nothing left),
    once: the run stops before its first test (exit 1); with it fixed, a failed
    test's branch is kept with its data and its URL printed with the password hidden;
    ``dbbranch list`` too."""
    verbose = ("-rA", "-v", "--log-level=DEBUG", "--dbbranch-keep=failed")
    write_tests(pytester, "test_s", SECRETS)
    broken = alembic_project.add(
        "r3", "r2", "ALTER TABLE widgets ADD COLUMN code text", "UPDATE widgets SET nme = 'x'"
    )
    failed = run_inner(pytester, secret_url, *verbose)
    assert_clean_failure(
        failed,
        "*Alembic migration failed at revision r3*",
        "*file: */versions/r3.py, line *: op.execute(*",
        "*statement: UPDATE widgets SET nme = 'x'*",
        '*error: UndefinedColumn: column "nme" of relation "widgets" does not exist*',
        errors=0,
        secret=SECRET,
    )
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    failed.stdout.fnmatch_lines(
        ["*no tests ran*", "*! *pytest-dbbranch: Alembic migration failed at revision r3*"]
    )
    # The failed build is dropped, and no later test built it again.
    assert alembic_project.runs == 1
    assert our_branches(secret_url, "template") == []
    assert our_branches(secret_url) == []

    broken.unlink()
    result = run_inner(pytester, secret_url, *verbose)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*branch dbb-*-fails-* is kept for inspection: postgresql://secretive:***@127.0.0.1:*"]
    )
    kept = our_branches(secret_url)
    assert len(kept) == 1 and "fails" in kept[0]
    with psycopg.connect(embedded_server.conninfo(kept[0])) as conn:
        assert conn.execute("SELECT count(*) FROM widgets WHERE name = 'evidence'").fetchone() == (1,)
    code, out, err = dbbranch(capsys, "list", "--url", secret_url, "--json")
    assert code == 0, err
    assert [row["name"] for row in json.loads(out) if row["kind"] == "branch" and row["kept"]] == kept
    printed = failed.stdout.str() + failed.stderr.str() + result.stdout.str() + result.stderr.str()
    assert SECRET not in printed + out + err
