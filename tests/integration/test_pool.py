"""Branches made ahead of time and branches rationed: ``WarmPool`` and ``BranchBudget``."""

from __future__ import annotations

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


def test_pool_forks_ahead_hands_out_and_drops_behind(make_manager: MakeManager, settings: Settings) -> None:
    """The pool keeps ``size`` branches of its template ready, drops given-back ones in the
    background, and at close drops everything it still holds."""
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
        name = pool.take()
        assert name is not None and name.startswith(f"dbb-{manager.run_id}-gw0-f-pool-")
        record = backend.describe(name)
        assert record is not None
        assert (record.tag.kind, record.tag.parent, record.tag.fingerprint) == (
            "branch",
            plan.name,
            plan.fingerprint,
        )
        with psycopg.connect(backend.address(name).conninfo()) as conn:
            assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        assert pool.give_back(name) is True
        wait_for(lambda: not backend.exists(name), what="the given-back branch to be dropped")
        wait_for(lambda: len(waiting_in_pool(url, plan.name)) == 2, what="the pool to refill")
    finally:
        pool.close()
    assert our_branches(url) == []
    assert stats.branches_created == stats.branches_dropped == 3
    assert pool.give_back("dbb-anything") is False, "a closed pool must leave the drop to the caller"


def test_pool_that_cannot_connect_leaves_the_work_to_the_caller() -> None:
    """If the pool's own backend fails, tests fork and drop for themselves."""

    def refuse() -> Backend:
        raise ServerError("no server today")

    pool = WarmPool(refuse, template="t", fingerprint="f", size=2, run_id="r", worker_id=None, stats=Stats())
    try:
        wait_for(lambda: not pool.give_back("dbb-x"), what="the pool to notice its failure")
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
            # The first test made the pool. Two waiting guarantee one is in the pool's ready
            # list (the second is forked after the first was put there).
            wait_for(lambda: len(waiting_in_pool(url, head)) >= 2, what="the pool to fork ahead")
        branch = manager.create(node_id=f"t::test_head[{index}]")
        assert "test-head" in branch.name
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
