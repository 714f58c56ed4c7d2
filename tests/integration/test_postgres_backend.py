"""``PostgresBackend``: branches as databases, and the tag that says which ones are ours.

(Forking a parent that has other sessions is in ``test_sources.py``: PostgreSQL waits five
seconds before refusing, so it is tested once.)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch.backends import Tag
from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.errors import BranchExistsError, NotOursError
from tests.helpers import create_database, databases, drop_database

UNTAGGED = "dbb-looks-ours-but-untagged"
FOREIGN = "dbbt-someone-elses-tool"


@pytest.fixture
def strangers(clean_embedded: str) -> Iterator[list[str]]:
    """Databases named like ours that we did not create: one without a comment, one with
    another tool's JSON comment."""
    create_database(clean_embedded, UNTAGGED)
    create_database(clean_embedded, FOREIGN)
    with psycopg.connect(clean_embedded, autocommit=True) as conn:
        conn.execute(
            sql.SQL('COMMENT ON DATABASE {} IS \'{{"tool":"other"}}\'').format(sql.Identifier(FOREIGN))
        )
    yield [UNTAGGED, FOREIGN]
    for name in (UNTAGGED, FOREIGN):
        drop_database(clean_embedded, name)


def branch_tag(run: str = "run-a", parent: str = "template0") -> Tag:
    return Tag(kind="branch", run=run, parent=parent)


def test_only_tagged_databases_are_ours(
    backend: PostgresBackend, strangers: list[str], clean_embedded: str
) -> None:
    """describe, list_ours and drop read the tag, never the name: a stranger is invisible to
    the first two and refused by the third."""
    backend.fork("dbb-ours", "template0", branch_tag())
    for name in strangers:
        assert backend.exists(name)
        assert backend.describe(name) is None
        with pytest.raises(
            NotOursError, match=f"refusing to drop database '{name}': it carries no pytest-dbbranch tag"
        ):
            backend.drop(name)
    assert [record.name for record in backend.list_ours()] == ["dbb-ours"]
    assert set(strangers) <= set(databases(clean_embedded))
    assert backend.describe("dbb-no-such-database") is None
    backend.drop("dbb-no-such-database")  # already gone is fine


def test_fork_tags_and_refuses_a_taken_name(backend: PostgresBackend) -> None:
    """A fork carries its tag at once; a name already taken is the builders' lock and the
    existing branch is left as it was."""
    tag = branch_tag()
    backend.fork("dbb-fork", "template0", tag)
    record = backend.describe("dbb-fork")
    assert record is not None and record.tag == tag and record.ready and record.allows_connections
    with pytest.raises(BranchExistsError, match="'dbb-fork' already exists"):
        backend.fork("dbb-fork", "template0", branch_tag(run="run-b"))
    described = backend.describe("dbb-fork")
    assert described is not None and described.tag.run == "run-a"


def test_seal_freezes_a_template(backend: PostgresBackend) -> None:
    """A sealed template takes no connections, is marked ready last, can be forked and, being
    ours, dropped."""
    tag = Tag(kind="template", run="run-a", parent="template0")
    backend.fork("dbbt-sealed", "template0", tag)
    unsealed = backend.describe("dbbt-sealed")
    assert unsealed is not None and not unsealed.ready
    backend.seal("dbbt-sealed", tag)
    sealed = backend.describe("dbbt-sealed")
    assert sealed is not None and sealed.ready and sealed.tag.ready and not sealed.allows_connections
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(backend.address("dbbt-sealed").conninfo())
    backend.fork("dbb-child", "dbbt-sealed", branch_tag(parent="dbbt-sealed"))
    backend.drop("dbbt-sealed")
    assert not backend.exists("dbbt-sealed")


def test_rename_and_retag(backend: PostgresBackend) -> None:
    """A pool branch gets its test's name (the tag travels with it); a kept branch is retagged."""
    tag = branch_tag()
    backend.fork("dbb-pool-0", "template0", tag)
    backend.rename("dbb-pool-0", "dbb-test-name")
    assert not backend.exists("dbb-pool-0")
    record = backend.describe("dbb-test-name")
    assert record is not None and record.tag == tag
    backend.retag("dbb-test-name", dataclasses.replace(tag, kept=True))
    kept = backend.describe("dbb-test-name")
    assert kept is not None and kept.tag.kept


def test_sibling_has_its_own_connection(backend: PostgresBackend) -> None:
    """The warm pool's thread works through a sibling: same server and locks, another
    connection, so closing one leaves the other working."""
    sibling = backend.sibling()
    assert (sibling.server_key, sibling.lock_folder, sibling.strategy) == (
        backend.server_key,
        backend.lock_folder,
        backend.strategy,
    )
    sibling.fork("dbb-from-sibling", "template0", branch_tag())
    sibling.close()
    assert backend.describe("dbb-from-sibling") is not None
    other = backend.sibling()
    backend.close()
    other.drop("dbb-from-sibling")
    assert not other.exists("dbb-from-sibling")
    other.close()


def test_listing_survives_branches_dropped_meanwhile(backend: PostgresBackend) -> None:
    """Listing happens while other processes drop branches: the reaper at a run's start,
    stale-template cleanup while the worker's own warm pool drops behind the tests,
    ``dbbranch list`` or ``gc`` during a run. A branch that goes away during the listing is
    simply not listed; the listing does not fail.

    The dropped branches sort last (their size is read after the sort), so each drop
    lands inside a listing's window: before the fix this fails within a few cycles."""
    for index in range(3):
        backend.fork(f"dbb-aa-listed-{index}", "template0", branch_tag())
    other = backend.sibling()
    stop = threading.Event()

    def churn() -> None:
        for index in range(50):
            if stop.is_set():
                return
            other.fork(f"dbb-zz-dropped-{index}", "template0", branch_tag())
            other.drop(f"dbb-zz-dropped-{index}")

    dropper = threading.Thread(target=churn)
    dropper.start()
    try:
        while dropper.is_alive():
            listed = {record.name for record in backend.list_ours()}
            assert {f"dbb-aa-listed-{index}" for index in range(3)} <= listed
    finally:
        stop.set()
        dropper.join()
        other.close()
