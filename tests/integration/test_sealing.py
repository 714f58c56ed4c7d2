"""The build-once protocol (``branching.sealing.ensure_sealed``) on a real server.

Templates and restored dumps both rely on it: whoever takes the lock builds, everybody else
finds the object sealed; anything unsealed is a crash's leftover and is never used.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.backends import Tag
from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.branching.sealing import ensure_sealed
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import DbBranchError
from tests.helpers import create_database, databases, drop_database
from tests.integration.support import wait_for

NAME = "dbbt-sealing-test"


class Builder:
    """A build that counts its runs and leaves a mark (``built.n``) in what it built."""

    def __init__(self, backend: PostgresBackend, name: str = NAME, fail: bool = False) -> None:
        self.backend = backend
        self.name = name
        self.fail = fail
        self.runs = 0

    def __call__(self) -> None:
        self.runs += 1
        with psycopg.connect(self.backend.address(self.name).conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE built (n int)")
            conn.execute("INSERT INTO built VALUES (%s)", (self.runs,))
        if self.fail:
            raise RuntimeError("the build exploded")


def seal(backend: PostgresBackend, build: Builder, run_id: str = "run-a", parent: str = "template0") -> bool:
    return ensure_sealed(
        backend,
        NAME,
        tag=Tag(kind="template", run=run_id, parent="", group="g"),
        parent=lambda: parent,
        build=build,
        run_id=run_id,
    )


def tables_in(backend: PostgresBackend, name: str) -> set[str]:
    """Tables of a sealed object, read on a throwaway fork (it accepts no connections)."""
    probe = "dbb-sealing-probe"
    backend.fork(probe, name, Tag(kind="branch", run="probe", parent=name))
    try:
        with psycopg.connect(backend.address(probe).conninfo()) as conn:
            rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    finally:
        backend.drop(probe)
    return {row[0] for row in rows}


def test_sealed_object_is_reused_without_building(backend: PostgresBackend) -> None:
    """The second caller gets the sealed object as is, and is not even asked for a parent
    (restoring a dump to make one is expensive)."""
    build = Builder(backend)
    assert seal(backend, build) is True
    record = backend.describe(NAME)
    assert record is not None and record.ready and not record.allows_connections
    assert record.tag.parent == "template0" and record.tag.run == "run-a"

    def no_parent() -> str:
        raise AssertionError("the parent was asked for although nothing is built")

    reused = ensure_sealed(
        backend,
        NAME,
        tag=Tag(kind="template", run="run-b", parent=""),
        parent=no_parent,
        build=build,
        run_id="run-b",
    )
    assert reused is False
    assert build.runs == 1
    described = backend.describe(NAME)
    assert described is not None and described.tag.run == "run-a"


def test_half_built_object_is_dropped_and_rebuilt(backend: PostgresBackend) -> None:
    """Forked and tagged but never sealed: what a builder killed mid-build leaves. It is never
    used; the next caller drops it and builds from scratch."""
    backend.fork(NAME, "template0", Tag(kind="template", run="crashed", parent="template0"))
    with psycopg.connect(backend.address(NAME).conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE leftover_of_the_crash (x int)")
    half = backend.describe(NAME)
    assert half is not None and not half.ready

    build = Builder(backend)
    assert seal(backend, build, run_id="run-next") is True
    assert build.runs == 1
    record = backend.describe(NAME)
    assert record is not None and record.ready and record.tag.run == "run-next"
    assert tables_in(backend, NAME) == {"built"}


def test_untagged_database_with_the_name_is_refused(backend: PostgresBackend, clean_embedded: str) -> None:
    """A database we did not create is never dropped to make room, whatever its name."""
    create_database(clean_embedded, NAME, "CREATE TABLE precious (x int)")
    try:
        build = Builder(backend)
        with pytest.raises(DbBranchError, match=f"'{NAME}' exists but was not created by pytest-dbbranch"):
            seal(backend, build)
        assert build.runs == 0
        assert databases(clean_embedded)[NAME] is None, "the foreign database was altered"
    finally:
        drop_database(clean_embedded, NAME)


def test_failed_build_leaves_nothing_and_releases_the_lock(backend: PostgresBackend) -> None:
    """A build that raises drops what it forked, so nobody mistakes it for a template, and the
    next attempt (same process, same lock) builds normally."""
    with pytest.raises(RuntimeError, match="the build exploded"):
        seal(backend, Builder(backend, fail=True))
    assert not backend.exists(NAME)
    retry = Builder(backend)
    assert seal(backend, retry) is True
    assert retry.runs == 1


def test_racing_builders_build_once(clean_embedded: str, tmp_path: Path) -> None:
    """Two builders with separate lock folders (two CI machines on one server): only the
    server's advisory lock stands between them. The build holds on until the other builder
    is queued on that lock, so the race is real, and still only one build happens."""
    address = ServerAddress.parse(clean_embedded)
    backends = []
    for machine in ("machine-a", "machine-b"):
        folder = tmp_path / machine
        folder.mkdir()
        backends.append(PostgresBackend(address, lock_folder=folder))
    builds: list[str] = []

    def queued_on_the_lock() -> bool:
        with psycopg.connect(address.conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            return bool(row.fetchone()[0])  # type: ignore[index]

    def build() -> None:
        builds.append(threading.current_thread().name)
        wait_for(queued_on_the_lock, what="the other builder to queue on the advisory lock")

    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def contend(index: int) -> None:
        start.wait()
        try:
            outcomes[f"builder-{index}"] = ensure_sealed(
                backends[index],
                NAME,
                tag=Tag(kind="template", run="one-run", parent=""),
                parent=lambda: "template0",
                build=build,
                run_id="one-run",
            )
        except BaseException as exc:
            outcomes[f"builder-{index}"] = exc

    threads = [threading.Thread(target=contend, args=(i,), name=f"builder-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert sorted(map(repr, outcomes.values())) == ["False", "True"], outcomes
        assert len(builds) == 1
        record = backends[0].describe(NAME)
        assert record is not None and record.ready
    finally:
        for made in backends:
            made.close()
