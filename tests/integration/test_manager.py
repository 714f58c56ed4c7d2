"""``BranchManager``: the life cycle every fixture, the command line and scripts go through."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.backends import Tag
from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.branching.branch import RollbackBranch
from pytest_dbbranch.errors import ServerError
from pytest_dbbranch.settings import Settings
from tests.helpers import SECRET, closed_port, create_database, databases, drop_database, our_branches
from tests.integration.support import MakeManager


def widgets(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM widgets").fetchone()
    assert row is not None
    return int(row[0])


def test_each_scope_gets_its_own_branch_named_for_run_and_worker(make_manager: MakeManager) -> None:
    """Function, module and session branches are separate copies of the template, named
    ``dbb-<run>-<worker>-<scope>-...``; release drops them."""
    manager = make_manager(worker_id="gw3")
    backend = manager.backend()
    made = []
    for scope, code in (("function", "f"), ("module", "m"), ("session", "s")):
        branch = manager.create(scope=scope, node_id=f"tests/test_x.py::test_{scope}")
        assert branch.name.startswith(f"dbb-{manager.run_id}-gw3-{code}-"), branch.name
        assert branch.connection.info.dbname == branch.name
        assert widgets(branch.connection) == 1, "a write of an earlier scope's branch leaked"
        branch.connection.execute("INSERT INTO widgets (name) VALUES ('mine')")
        branch.connection.commit()
        made.append(branch)
    assert len({branch.name for branch in made}) == 3
    for branch in made:
        assert manager.release(branch) is False
        assert not backend.exists(branch.name)
    assert (manager.stats.branches_created, manager.stats.branches_dropped) == (3, 3)


def test_keep_policies(make_manager: MakeManager, settings: Settings) -> None:
    """``never`` drops, ``failed`` keeps a failed test's branch, ``always`` keeps every one; a
    kept branch is retagged ``kept`` and holds what the test left in it."""
    manager = make_manager()
    backend = manager.backend()
    cases = [
        ("never", True, False),
        ("failed", False, False),
        ("failed", True, True),
        ("always", False, True),
    ]
    kept = []
    for keep, failed, expect_kept in cases:
        branch = manager.create(
            settings.with_overrides("marker", keep=keep), node_id=f"t::test_{keep}_{failed}"
        )
        branch.connection.execute("INSERT INTO widgets (name) VALUES ('evidence')")
        branch.connection.commit()
        branch.failed = failed
        assert manager.release(branch) is expect_kept, (keep, failed)
        record = backend.describe(branch.name)
        if not expect_kept:
            assert record is None and not backend.exists(branch.name)
            continue
        kept.append(branch.name)
        assert record is not None and record.tag.kept
        with psycopg.connect(branch.conninfo) as conn:
            assert widgets(conn) == 2
    assert [branch.name for branch in manager.kept] == kept
    assert manager.stats.branches_kept == 2
    assert our_branches(str(settings.url)) == sorted(kept)


def test_scratch_branch_is_dropped_even_when_the_block_raises(make_manager: MakeManager) -> None:
    """A tool's throwaway copy (migration check, schema read) never outlives its block."""
    manager = make_manager()
    template = manager.template()
    with pytest.raises(RuntimeError, match="the tool failed"), manager.scratch(template, "tool") as address:
        seen = address.dbname
        with psycopg.connect(address.conninfo()) as conn:
            assert widgets(conn) == 1
        raise RuntimeError("the tool failed")
    assert seen != template
    assert not manager.backend().exists(seen)


def test_rollback_isolation_shares_one_branch_per_worker(
    make_manager: MakeManager, settings: Settings
) -> None:
    """Each worker forks one branch and keeps one connection; every test's writes are rolled
    back, commits included (a commit releases a savepoint, not the test's transaction).
    Closing the manager drops the worker's branch."""
    run = names.new_run_id()
    hosts = set()
    for worker in ("gw0", "gw1"):
        manager = make_manager(run_id=run, worker_id=worker, isolation="rollback")
        pids = set()
        for index in range(3):
            branch = manager.create(node_id=f"t::test_writes[{index}]")
            assert isinstance(branch, RollbackBranch)
            assert widgets(branch.connection) == 1
            branch.connection.execute("INSERT INTO widgets (name) VALUES ('temp')")
            branch.connection.commit()
            assert widgets(branch.connection) == 2
            hosts.add(branch.name)
            pids.add(branch.connection.info.backend_pid)
            assert manager.release(branch) is False
        assert len(pids) == 1, "one long-lived connection per worker, not one per test"
        assert manager.stats.branches_created == 1, "one branch per worker, not per test"
        manager.close()
        assert manager.stats.branches_dropped == 1
    assert len(hosts) == 2
    assert our_branches(str(settings.url)) == []


def test_close_drops_worker_branches_and_leaves_nothing(
    make_manager: MakeManager, settings: Settings
) -> None:
    """Branches the manager owns for the run (rollback's per-worker branch, module-scope
    included) go at close; only the template stays for the next run."""
    url = str(settings.url)
    manager = make_manager(isolation="rollback", module_isolation="rollback")
    for scope in ("function", "module"):
        manager.release(manager.create(scope=scope, node_id=f"t::{scope}"))
    assert len(our_branches(url)) == 1, "function and module scope share the worker's branch"
    manager.close()
    assert our_branches(url) == []
    assert our_branches(url, "template") == [manager.template()]


def test_release_survives_what_a_test_does_to_its_connections(
    make_manager: MakeManager, server_url: str
) -> None:
    """Open transactions holding locks, sessions the manager never saw, a connection the
    test closed or one killed under it: each branch is still dropped, and the next test is
    fine, on a superuser's server and as a non-superuser by URL."""
    manager = make_manager(url=server_url)

    leaking = manager.create(node_id="t::test_open_transaction_and_extra_connections")
    leaking.connection.execute("LOCK TABLE widgets IN ACCESS EXCLUSIVE MODE")
    leaked = [psycopg.connect(leaking.conninfo) for _ in range(3)]
    for extra in leaked:
        extra.execute("SELECT 1")  # idle in transaction, never closed by the test
    manager.release(leaking)
    assert not manager.backend().exists(leaking.name)
    for extra in leaked:
        extra.close()

    closing = manager.create(node_id="t::test_closes_its_own_connection")
    closing.connection.close()
    manager.release(closing)

    breaking = manager.create(node_id="t::test_breaks_its_connection")
    with psycopg.connect(breaking.conninfo, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (breaking.connection.info.backend_pid,))
    manager.release(breaking)

    assert our_branches(server_url) == []
    with manager.branch(node_id="t::test_later_tests_are_fine") as later:
        assert widgets(later.connection) == 1
    assert our_branches(server_url) == []


def test_server_that_refused_is_not_asked_again(make_manager: MakeManager) -> None:
    """Every test of a run asks for the backend: after one refusal they all get the same
    error at once, without a connection attempt each, and never the password."""
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{closed_port()}/postgres"
    manager = make_manager(url=url)
    with pytest.raises(ServerError) as first:
        manager.backend()
    message = str(first.value)
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:" in message
    assert "is the server running" in message and SECRET not in message
    with pytest.raises(ServerError) as second:
        manager.create()
    assert second.value is first.value


def test_reaper_drops_branches_of_dead_runs_wherever_they_ran(
    make_manager: MakeManager, backend: PostgresBackend, clean_embedded: str
) -> None:
    """A run is alive while one of its processes holds its run lock on the server, whatever
    machine, container or PID namespace it runs in. At a run's first backend use, its
    reaping process drops branches of every dead run, and untagged databases with our
    generated names whose run is dead (a kill between CREATE DATABASE and its tag). Kept
    branches, templates, live runs' branches and databases that are not ours stay."""
    live = make_manager(run_id="liverun")
    live.backend()  # holds run:liverun from now on
    tags = {
        # Same host, a live pid, but no run lock: another PID namespace, same hostname.
        names.branch_name("nsrun", None, "function", "t::a"): Tag(
            kind="branch", run="nsrun", parent="template0", pid=os.getpid()
        ),
        # Another machine, dead: provable now through the server.
        names.branch_name("farrun", None, "function", "t::b"): Tag(
            kind="branch", run="farrun", parent="template0", pid=1, host="elsewhere"
        ),
        names.branch_name("deadrun", None, "function", "t::kept"): Tag(
            kind="branch", run="deadrun", parent="template0", kept=True
        ),
        names.branch_name("liverun", None, "function", "t::c"): Tag(
            kind="branch", run="liverun", parent="template0", host="elsewhere", pid=1
        ),
        "dbbt-dead-run-template": Tag(kind="template", run="deadrun", parent="template0"),
    }
    for name, tag in tags.items():
        backend.fork(name, "template0", tag)
    dead, far, kept, live_branch, template = tags
    orphan = names.branch_name("deadrun", "gw1", "function", "t::killed-before-its-tag")
    live_orphan = names.branch_name("liverun", "gw1", "function", "t::being-tagged")
    lookalikes = ["dbb-lookalike-m-f-test-0123456789", "dbb-lookalike-not-ours"]
    for name in [orphan, live_orphan, *lookalikes]:
        create_database(clean_embedded, name)
    try:
        for quiet in (make_manager(worker_id="gw1"), make_manager(reap_on_start=False)):
            quiet.backend()
            assert quiet.stats.branches_reaped == 0
        assert set(tags) | {orphan} <= set(databases(clean_embedded))

        reaper = make_manager(worker_id="gw0")
        reaper.backend()
        left = set(databases(clean_embedded))
        assert not {dead, far, orphan} & left
        assert {kept, live_branch, template, live_orphan, *lookalikes} <= left
        assert reaper.stats.branches_reaped == 3
    finally:
        for name in [live_orphan, *lookalikes]:
            drop_database(clean_embedded, name)
