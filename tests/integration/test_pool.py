"""Branches made ahead of time and branches rationed: ``WarmPool`` and ``BranchBudget``."""

from __future__ import annotations

import time

import psycopg

from pytest_dbbranch.backends import Backend, Tag
from pytest_dbbranch.branching.pool import WarmPool
from pytest_dbbranch.branching.stats import Stats
from pytest_dbbranch.errors import ServerError
from pytest_dbbranch.settings import Settings
from tests.helpers import databases, our_branches
from tests.integration.support import MakeManager, wait_for


def waiting_in_pool(url: str, template: str) -> list[str]:
    """Pool branches of ``template`` not handed out yet (a handed-out one takes its test's
    name). Read from the catalog directly: ``list_ours`` may fail while the pool drops
    (see ``test_postgres_backend.test_listing_survives_branches_dropped_meanwhile``)."""
    found = []
    for name, comment in databases(url).items():
        tag = Tag.loads(comment)
        if tag is not None and tag.parent == template and "-f-pool-" in name:
            found.append(name)
    return found


def test_pool_forks_ahead_with_a_connection_open_and_drops_what_it_holds(
    make_manager: MakeManager, settings: Settings
) -> None:
    """The pool keeps ``size`` branches of its template ready, each with its first
    connection already open, and at close drops everything it still holds."""
    url = str(settings.url)
    manager = make_manager()
    plan = manager.plan()
    backend = manager.backend()
    stats = Stats()
    pool = WarmPool(
        backend.sibling,
        template=plan.name,
        fingerprint=plan.fingerprint,
        size=2,
        run_id=manager.run_id,
        worker_id="gw0",
        stats=stats,
    )
    try:
        wait_for(lambda: len(waiting_in_pool(url, plan.name)) == 2, what="the pool to fill")
        wait_for(lambda: len(pool._ready) == 2, what="the pool's connections")
        ready = pool.take()
        assert ready is not None and ready.name.startswith(f"dbb-{manager.run_id}-gw0-f-pool-")
        record = backend.describe(ready.name)
        assert record is not None
        assert (record.tag.kind, record.tag.parent, record.tag.fingerprint) == (
            "branch",
            plan.name,
            plan.fingerprint,
        )
        assert ready.connection is not None and ready.connection.info.dbname == ready.name
        assert ready.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        ready.connection.close()
        backend.drop(ready.name)
        wait_for(lambda: len(waiting_in_pool(url, plan.name)) == 2, what="the pool to refill")
    finally:
        pool.close()
    assert our_branches(url) == []
    assert stats.branches_created == 3 and stats.branches_dropped == 2


def test_pool_that_cannot_connect_leaves_the_work_to_the_caller() -> None:
    """If the pool's own backend fails, tests fork and drop for themselves."""

    def refuse() -> Backend:
        raise ServerError("no server today")

    pool = WarmPool(refuse, template="t", fingerprint="f", size=2, run_id="r", worker_id=None, stats=Stats())
    try:
        wait_for(lambda: pool._failed is not None, what="the pool to notice its failure")
        assert pool.take() is None
    finally:
        pool.close()


def test_manager_pool_hands_out_branches_of_the_right_template(
    make_manager: MakeManager, settings: Settings
) -> None:
    """One pool per template: a test at another revision in between never gets a head branch,
    and a branch a test emptied is never handed out again."""
    url = str(settings.url)
    manager = make_manager(pool_size=2)
    head = manager.template()
    old = manager.settings.with_overrides("marker", revision="r1")
    # Built before any pool runs: building lists the server's templates, which may fail
    # while a pool drops (see test_postgres_backend.test_listing_survives_branches_dropped_meanwhile).
    manager.template(old)

    def run_head_test(index: int) -> None:
        if index:
            # The first test made the pool: wait until it has one ready.
            wait_for(lambda: manager._pools[head]._ready, what="the pool to fork ahead")
        branch = manager.create(node_id=f"t::test_head[{index}]")
        assert "test-head" in branch.readable_name
        assert ("-f-pool-" in branch.name) == (index > 0), "a hit runs under its pool name"
        assert branch.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        branch.connection.execute("DELETE FROM widgets")
        branch.connection.commit()
        manager.release(branch)

    for index in range(4):
        run_head_test(index)
    with manager.branch(old, node_id="t::test_old_revision") as branch:
        columns = branch.connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'"
        ).fetchall()
        assert {column for (column,) in columns} == {"id", "name"}
    for index in range(4, 7):
        run_head_test(index)
    # Misses: the first test at each revision, whose pool it made.
    assert (manager.stats.pool_hits, manager.stats.pool_misses) == (6, 2)
    manager.close()
    assert our_branches(url) == []
    assert manager.stats.branches_created == manager.stats.branches_dropped


def test_no_pool_when_its_size_is_zero(make_manager: MakeManager) -> None:
    """``pool_size=0`` turns the pool off: every branch is forked and dropped by the test."""
    manager = make_manager(pool_size=0)
    with manager.branch():
        pass
    assert manager.stats.pool_hits + manager.stats.pool_misses == 0
    assert (manager.stats.branches_created, manager.stats.branches_dropped) == (1, 1)


def test_a_kept_pool_branch_takes_its_tests_name(make_manager: MakeManager, settings: Settings) -> None:
    """A pool branch runs under its pool name (a session on it forbids a rename); the one a
    run keeps is renamed after its clients are closed, so the report names the test."""
    manager = make_manager(pool_size=2, keep="always")
    head = manager.template()
    manager.release(manager.create(node_id="t::test_first"))
    wait_for(lambda: manager._pools[head]._ready, what="the pool to fork ahead")
    branch = manager.create(node_id="t::test_second")
    pool_name = branch.name
    assert "-f-pool-" in pool_name and "test-second" in branch.readable_name
    assert branch.connection.execute("SELECT current_database()").fetchone() == (pool_name,)
    assert manager.release(branch) is True
    assert branch.name == branch.readable_name
    names = {record.name for record in manager.backend().list_ours()}
    assert branch.readable_name in names and pool_name not in names
    record = manager.backend().describe(branch.name)
    assert record is not None and record.tag.kept


def test_a_pool_whose_tests_ignore_the_connection_stops_opening_one(make_manager: MakeManager) -> None:
    """Tests that only use an engine never touch the connection the pool opened: after the
    first such test, the pool opens none ahead."""
    manager = make_manager(pool_size=1)
    head = manager.template()
    manager.release(manager.create(node_id="t::test_first"))
    pool = manager._pools[head]
    wait_for(lambda: pool._ready, what="the pool to fork ahead")
    branch = manager.create(node_id="t::test_engine_only")
    assert branch._adopted is not None
    with branch.engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM widgets").scalar() == 1
    manager.release(branch)
    assert pool.preconnect is False
    # The branch forked while that test ran has its connection; the next one has none.
    wait_for(lambda: pool._ready, what="the pool to refill")
    manager.release(manager.create(node_id="t::test_next"))
    ready = wait_for(lambda: pool._ready and pool._ready[0], what="the pool to refill again")
    assert ready.connection is None


def test_no_branch_is_forked_ahead_for_a_test_that_will_not_come(make_manager: MakeManager) -> None:
    """Told how many function-scope branches the run needs (pytest counts them at
    collection), the manager makes no pool for the last one: a one-test rerun forks one
    branch, not three."""
    manager = make_manager(pool_size=2)
    manager.expect(2)
    manager.release(manager.create(node_id="t::test_one"))
    head = manager.template()
    wait_for(lambda: manager._pools[head]._ready, what="the pool to fork the second test's branch")
    manager.release(manager.create(node_id="t::test_two"))
    time.sleep(0.2)
    assert manager.stats.branches_created == 2, "forked a branch ahead for no test"

    once = make_manager(pool_size=2)
    once.expect(1)
    once.release(once.create(node_id="t::test_only"))
    assert once._pools == {}
    assert (once.stats.branches_created, once.stats.pool_hits + once.stats.pool_misses) == (1, 0)


def test_the_server_says_how_many_connections_it_has_left(make_manager: MakeManager) -> None:
    """What the warm pool sizes itself by: ``max_connections`` less the reserved slots and
    the sessions open now, so three more sessions leave three fewer."""
    backend = make_manager().backend()
    seen = []
    for _attempt in range(10):  # other tests on this server connect too: find a quiet moment
        before = backend.spare_connections()
        # The embedded server allows 300, and this test holds some.
        assert before is not None and 0 < before < 300
        extra = [psycopg.connect(backend.address("postgres").conninfo()) for _ in range(3)]
        try:
            seen.append(before - (backend.spare_connections() or 0))
        finally:
            for conn in extra:
                conn.close()
        if seen[-1] == 3:
            break
    assert seen[-1] == 3, seen
