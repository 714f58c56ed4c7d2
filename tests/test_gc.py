"""Cleaning up after crashed runs: the reaper at session start and ``dbbranch gc``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest
from conftest import AlembicProject, databases, drop_ours, our_branches, run_inner, write_tests
from psycopg import sql

from pytest_dbbranch.backends.base import BranchRecord, Tag
from pytest_dbbranch.branching.cleanup import find_garbage

KILLED = """
    import os, signal

    def test_dies_with_live_branches(db_branch_session, db_branch):
        db_branch.execute("SELECT 1")
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(autouse=True)
def _clean_server(embedded_url: str) -> None:
    drop_ours(embedded_url)


@pytest.fixture
def lookalikes(embedded_url: str):
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


def dbbranch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbbranch.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_next_run_reaps_branches_of_a_killed_run(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str, lookalikes: list[str]
) -> None:
    write_tests(pytester, "test_k", KILLED)
    killed = run_inner(pytester, embedded_url)
    assert killed.ret not in (0, 1)
    left = our_branches(embedded_url)
    assert len(left) >= 2  # session + function branch, and what the warm pool had forked ahead
    (pytester.path / "test_k.py").unlink()
    write_tests(pytester, "test_ok", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, embedded_url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{len(left)} left by dead runs reaped*"])
    assert our_branches(embedded_url) == []
    assert set(lookalikes) <= set(databases(embedded_url))


def test_gc_after_kill_9(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str, lookalikes: list[str]
) -> None:
    write_tests(pytester, "test_k", KILLED)
    write_tests(pytester, "test_keep", "def test_kept(db_branch):\n    assert False\n")
    run_inner(pytester, embedded_url, "--dbbranch-keep=failed", "-p", "no:randomly", "test_keep.py")
    kept = our_branches(embedded_url)
    assert len(kept) == 1
    assert run_inner(pytester, embedded_url, "test_k.py").ret not in (0, 1)
    left = set(our_branches(embedded_url)) - set(kept)
    assert len(left) >= 2

    dry = dbbranch("gc", "--url", embedded_url, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert {c["name"] for c in report["candidates"]} == left
    assert all("is gone" in c["reason"] for c in report["candidates"])
    assert set(our_branches(embedded_url)) == left | set(kept), "dry run deleted something"

    done = dbbranch("gc", "--url", embedded_url)
    assert done.returncode == 0, done.stderr
    assert our_branches(embedded_url) == kept, "the kept branch survives gc without --older-than"
    assert set(lookalikes) <= set(databases(embedded_url))
    # Templates of a live project stay.
    assert len(our_branches(embedded_url, "template")) == 1

    time.sleep(1.1)
    old = dbbranch("gc", "--url", embedded_url, "--older-than", "1s")
    assert old.returncode == 0, old.stderr
    assert our_branches(embedded_url) == []
    assert set(lookalikes) <= set(databases(embedded_url))


def test_delete_refuses_what_is_not_ours(embedded_url: str, lookalikes: list[str]) -> None:
    for name in lookalikes:
        result = dbbranch("delete", "--url", embedded_url, name)
        assert result.returncode == 3, result.stderr
        assert "did not create it" in result.stderr
    assert set(lookalikes) <= set(databases(embedded_url))
    missing = dbbranch("delete", "--url", embedded_url, "dbb-does-not-exist")
    assert missing.returncode == 1


def test_create_then_delete(alembic_project: AlembicProject, embedded_url: str, monkeypatch) -> None:
    monkeypatch.chdir(alembic_project.root)
    created = dbbranch("create", "--url", embedded_url, "--name", "alice-debugging", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert "alice-debugging" in info["name"]
    with psycopg.connect(info["url"]) as conn:  # no password on this server
        assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    assert our_branches(embedded_url) == [info["name"]]
    # A created branch is kept: the reaper and gc leave it alone.
    assert dbbranch("gc", "--url", embedded_url).returncode == 0
    assert our_branches(embedded_url) == [info["name"]]
    deleted = dbbranch("delete", "--url", embedded_url, info["name"])
    assert deleted.returncode == 0, deleted.stderr
    assert our_branches(embedded_url) == []


def _record(name: str, **tag: object) -> BranchRecord:
    base = {"kind": "branch", "run": "r1", "parent": "t", "host": "here", "pid": 1, "created": 1000.0}
    base.update(tag)
    return BranchRecord(name=name, tag=Tag(**base))  # type: ignore[arg-type]


def test_find_garbage_rules() -> None:
    alive = lambda pid: pid == 1  # noqa: E731 - pid 1 is the only live process here
    records = [
        _record("dbb-live", pid=1),
        _record("dbb-dead", pid=2),
        _record("dbb-dead-kept", pid=2, kept=True),
        _record("dbb-other-host", host="elsewhere", pid=2),
        _record("dbb-current", run="now", pid=2),
        _record("dbbt-old", kind="template", group="p", ready=True, created=100.0),
        _record("dbbt-new", kind="template", group="p", ready=True, created=900.0),
        _record("dbbt-other-project", kind="template", group="q", ready=True, created=100.0),
        _record("dbbt-half", kind="template", group="z", ready=False, pid=2),
        BranchRecord(
            name="dbb-expired",
            tag=Tag(kind="branch", run="r", parent="t", host="x", pid=1, created=999.0),
            expires_at=1500.0,
        ),
    ]
    found = {
        g.record.name: g.reason
        for g in find_garbage(records, now=2000.0, current_runs=["now"], host="here", alive=alive)
    }
    assert set(found) == {"dbb-dead", "dbbt-old", "dbbt-half", "dbb-expired"}
    assert "replaced by dbbt-new" in found["dbbt-old"]
    assert "TTL" in found["dbb-expired"]
    older = {
        g.record.name
        for g in find_garbage(
            records, now=2000.0, older_than=500, current_runs=["now"], host="here", alive=alive
        )
    }
    assert {"dbb-dead-kept", "dbb-other-host", "dbb-live"} <= older
    assert "dbb-current" not in older and "dbbt-new" not in older and "dbbt-other-project" not in older
