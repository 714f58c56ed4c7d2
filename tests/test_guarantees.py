"""The promises in the README's "Guarantees" section, each shown by a test that breaks with it.

Source untouched, crash safety, parallel load, faults in the middle, secrets never printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from conftest import (
    SECRET,
    AlembicProject,
    copy_example,
    drop_ours,
    our_branches,
    pg_dump,
    restore_snapshot,
    run_inner,
    write_tests,
)
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.server.embedded import EmbeddedServer

PROD = "prod_inventory_snapshot"


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    drop_ours(embedded_url)


@pytest.fixture
def production(embedded_server: ServerAddress) -> str:
    """The example's snapshot restored into an ordinary database: the user's production copy."""
    restore_snapshot(embedded_server, PROD)
    return PROD


def fingerprint(url: str, dbname: str) -> tuple[bytes, dict[str, str]]:
    """A schema+data dump, plus an md5 of every table's rows in a fixed order."""
    address = ServerAddress.parse(url)
    with psycopg.connect(address.conninfo(dbname)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
        ]
        rows = {
            table: conn.execute(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
                ).format(sql.SQL(table))
            ).fetchone()[0]
            for table in tables
        }
    return pg_dump(url, dbname), rows


# -- 1. the source is never written --------------------------------------------------------


def test_source_database_untouched_by_full_run(
    pytester: pytest.Pytester, production: str, embedded_url: str
) -> None:
    before = fingerprint(embedded_url, production)
    assert before[1], "the snapshot has tables"
    copy_example(pytester)
    result = run_inner(
        pytester,
        embedded_url,
        "-n",
        "2",
        "--dist",
        "loadscope",
        "--dbbranch-check-migrations",
        "-o",
        "dbbranch_models=inventory.models:metadata",
        DBBRANCH_SOURCE=production,
    )
    assert result.ret == 0, result.stdout.str()
    assert "dbbranch-migrations::reversible PASSED" in result.stdout.str() or "passed" in result.stdout.str()
    assert fingerprint(embedded_url, production) == before
    assert our_branches(embedded_url) == []


def test_source_branch_untouched_on_the_emulator(
    pytester: pytest.Pytester,
    production: str,
    embedded_server: ServerAddress,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from pytest_dbbranch.emulator import LakebaseEmulator

    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    with LakebaseEmulator(embedded_server, operation_delay=0.01) as emu:
        emu.create_project("inventory", source_database=production)
        backing = emu.database_of("inventory", "production")
        url = embedded_server.url()
        before = fingerprint(url, backing)
        copy_example(pytester)
        result = run_inner(
            pytester,
            None,
            "--dbbranch-check-migrations",
            DATABRICKS_HOST=emu.url,
            DATABRICKS_TOKEN=emu.token,
            DBBRANCH_LAKEBASE_PROJECT="inventory",
            DBBRANCH_LAKEBASE_PORT=str(emu.pg_port),
            DBBRANCH_SOURCE="production",
        )
        assert result.ret == 0, result.stdout.str()
        assert fingerprint(url, backing) == before
        assert [b["name"] for b in emu.branches("inventory") if "/dbb-" in b["name"]] == []
    assert fingerprint(url, production)[1] == before[1]


# -- 2. crash safety -----------------------------------------------------------------------


def _next_run_cleans(pytester: pytest.Pytester, url: str) -> None:
    for path in pytester.path.glob("test_*.py"):
        path.unlink()
    write_tests(pytester, "test_after", "def test_a(db_branch):\n    pass\n")
    run_inner(pytester, url).assert_outcomes(passed=1)
    assert our_branches(url) == []


def test_kill_one_xdist_worker(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_w",
        """
        import os, signal, pytest

        @pytest.mark.parametrize("i", range(8))
        def test_a(db_branch, db_branch_session, i):
            if i == 3 and not os.path.exists("killed"):
                open("killed", "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    result = run_inner(pytester, embedded_url, "-n", "2")
    assert "crashed" in result.stdout.str() or "replacing crashed worker" in result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 7 and outcomes.get("failed", 0) == 1
    assert alembic_project.runs == 1
    _next_run_cleans(pytester, embedded_url)


def test_kill_during_teardown(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_t",
        """
        import os, signal, pytest

        @pytest.fixture
        def dies_in_teardown(db_branch):
            yield db_branch
            os.kill(os.getpid(), signal.SIGKILL)

        def test_a(dies_in_teardown):
            dies_in_teardown.execute("SELECT 1")
    """,
    )
    assert run_inner(pytester, embedded_url).ret not in (0, 1)
    assert our_branches(embedded_url)
    _next_run_cleans(pytester, embedded_url)


def test_ctrl_c_while_branches_are_live(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(
        pytester,
        "test_c",
        """
        import time

        def test_slow(db_branch, db_branch_session):
            open("started", "w").close()
            time.sleep(60)
    """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dbbranch-url", embedded_url],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (pytester.path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output
    assert "KeyboardInterrupt" in output
    assert our_branches(embedded_url) == [], "teardown ran on Ctrl-C"


# -- 3. parallel load ----------------------------------------------------------------------


LOAD = """
    import pytest

    @pytest.mark.parametrize("i", range(COUNT))
    def test_load(db_branch, db_branch_info, i):
        with open(f"names-{db_branch_info.name}", "w"):
            pass
        db_branch.execute("INSERT INTO widgets (name) VALUES ('x')")
        db_branch.commit()
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 2
"""


def test_hundreds_of_tests_with_xdist_repeated(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    write_tests(pytester, "test_load", LOAD.replace("COUNT", "200"))
    for _ in range(3):
        result = run_inner(pytester, embedded_url, "-n", "2")
        result.assert_outcomes(passed=200)
        assert "55006" not in result.stdout.str() and "accessed by other users" not in result.stdout.str()
        assert our_branches(embedded_url) == []
    assert len(list(pytester.path.glob("names-*"))) == 600, "a name was used twice"
    assert alembic_project.runs == 1


def test_ci_shards_started_at_once(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    alembic_project.add("r3", "r2", "SELECT pg_sleep(0.3)", undo=("SELECT 1",))
    write_tests(pytester, "test_load", LOAD.replace("COUNT", "60"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-n",
                "2",
                "--dbbranch-url",
                embedded_url,
            ],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("60 passed" in out for out in outputs)
    assert not any("accessed by other users" in out for out in outputs)
    assert alembic_project.runs == 1
    assert len(list(pytester.path.glob("names-*"))) == 180
    assert our_branches(embedded_url) == []


# -- 4. faults in the middle ---------------------------------------------------------------


def test_server_restart_during_a_run(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded: EmbeddedServer, embedded_url: str
) -> None:
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
    base = str(embedded.base_folder)  # type: ignore[attr-defined]
    result = run_inner(pytester, embedded_url, "-p", "no:randomly", OUTER_EMBEDDED_BASE=base)
    result.assert_outcomes(passed=4)
    assert our_branches(embedded_url) == []


# -- 6. secrets ------------------------------------------------------------------------------


def test_no_secret_in_anything_a_failing_run_prints(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_server: ServerAddress
) -> None:
    url = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    ).url()
    alembic_project.add("r3", "r2", "SELECT * FROM no_such_table")
    write_tests(
        pytester,
        "test_s",
        """
        import logging

        def test_fails(db_branch_info):
            logging.getLogger("app").warning("connected to %s", db_branch_info.display_url)
            assert False, repr(db_branch_info)
    """,
    )
    outputs = []
    # A migration error, then (migrations fixed) a failing test with its branch kept.
    outputs.append(run_inner(pytester, url, "-rA", "-v", "--log-level=DEBUG", "--dbbranch-keep=failed"))
    (alembic_project.versions / "r3.py").unlink()
    outputs.append(run_inner(pytester, url, "-rA", "-v", "--log-level=DEBUG", "--dbbranch-keep=failed"))
    listing = subprocess.run(
        [sys.executable, "-m", "pytest_dbbranch.cli", "list", "--url", url, "--json"],
        capture_output=True,
        text=True,
    )
    text = "".join(r.stdout.str() + r.stderr.str() for r in outputs) + listing.stdout + listing.stderr
    assert "Alembic migration failed" in text and "kept for inspection" in text
    assert SECRET not in text
    drop_ours(url)
