"""Background work never piles up: the drop queue holds at most ``limit`` used branches (a
durable server takes about a second per DROP; the review once counted 17 live branches 6 s
into a 22-test run), and the warm pool never forks more than its size, nor more than the
tests still to come ask for. Driven with backend doubles whose creation the test holds back,
so the threads are busy and nothing they queue is dropped meanwhile."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pytest_dbbranch.branching.pool import BackgroundDrops, WarmPool
from pytest_dbbranch.branching.stats import Stats


class RecordingBackend:
    """Forks and drops by name, instantly; one server for every sibling."""

    warm_pool = True
    server_key = "double"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.forked: list[str] = []
        self.dropped: list[str] = []
        self.gate = gate
        self._lock = threading.Lock()

    def sibling(self) -> RecordingBackend:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never released the backend"
        return self

    def fork(self, name: str, parent: str, tag: Any) -> None:
        with self._lock:
            self.forked.append(name)

    def drop(self, name: str) -> None:
        with self._lock:
            self.dropped.append(name)

    def close(self) -> None:
        pass

    def spare_connections(self) -> int | None:
        return None  # unknown: the pool takes its full size

    def address(self, name: str) -> Any:
        raise psycopg.OperationalError("a double has no server to connect to")


def pool_for(backend: RecordingBackend, **overrides: Any) -> WarmPool:
    """A pool of two on the double (whose forks and drops are instant)."""
    options: dict[str, Any] = {
        "template": "dbbt-t",
        "fingerprint": "f",
        "size": 2,
        "run_id": "r",
        "worker_id": None,
        "stats": Stats(),
        "preconnect": False,
    }
    return WarmPool(backend.sibling, **{**options, **overrides})  # type: ignore[arg-type]


def settle(pool: WarmPool, count: int) -> None:
    """Wait until the pool's threads have made ``count`` branches and are idle again."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with pool._cond:
            if len(pool._ready) >= count and pool._in_flight == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"the pool never had {count} branches ready")


def test_drop_queue_refuses_once_its_limit_is_pending() -> None:
    released = threading.Event()
    backend = RecordingBackend(gate=released)
    drops = BackgroundDrops(Stats(), limit=3)
    try:
        accepted = [drops.give(backend, f"dbb-used-{i}") for i in range(6)]  # type: ignore[arg-type]
        assert accepted == [True, True, True, False, False, False]
    finally:
        released.set()
        drops.close()
    # What it accepted it dropped (in the background or at close); the rest was the caller's.
    assert sorted(backend.dropped) == ["dbb-used-0", "dbb-used-1", "dbb-used-2"]


def test_a_closed_drop_queue_leaves_the_drop_to_the_caller() -> None:
    backend = RecordingBackend()
    drops = BackgroundDrops(Stats(), limit=4)
    assert drops.give(backend, "dbb-a") is True  # type: ignore[arg-type]
    drops.close()
    assert backend.dropped == ["dbb-a"]
    queue = next(iter(drops._queues.values()), None)
    assert queue is None, "close forgets its queues: a later give starts a new one"


def test_pool_never_forks_more_than_its_size_with_two_threads() -> None:
    backend = RecordingBackend()
    pool = pool_for(backend)
    try:
        settle(pool, 2)
        time.sleep(0.05)
        assert len(backend.forked) == 2
        taken = pool.take()
        assert taken is not None and taken.connection is None
        settle(pool, 2)
        assert len(backend.forked) == 3, "one taken, one forked in its place"
    finally:
        pool.close()
    # Everything it forked and did not hand out, it dropped.
    assert set(backend.forked) - {taken.name} == set(backend.dropped)


def test_pool_forks_no_branch_no_test_will_take() -> None:
    """``wanted``: the tests still to come. With one left the pool keeps one ready, with
    none it forks nothing more (the end of every run, and a one-test rerun)."""
    backend = RecordingBackend()
    left = [1]
    pool = pool_for(backend, wanted=lambda: left[0])
    try:
        settle(pool, 1)
        time.sleep(0.05)
        assert len(backend.forked) == 1
        left[0] = 0
        assert pool.take() is not None
        time.sleep(0.05)
        assert len(backend.forked) == 1, "forked a branch after the last test took its own"
        assert pool.take() is None
    finally:
        pool.close()
    assert backend.dropped == []


class TightServer(RecordingBackend):
    """A server with ``spare`` client connections left."""

    def __init__(self, spare: int) -> None:
        super().__init__()
        self.spare = spare

    def spare_connections(self) -> int:
        return self.spare


def test_pool_opens_no_connections_ahead_where_the_server_has_no_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two forkers and two waiting sessions per worker would take 16 connections at -n 4:
    with 20 spare (10 kept for everything else) the pool keeps one thread and opens none."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    for spare, threads, preconnect in ((20, 1, False), (200, 2, True)):
        backend = TightServer(spare)
        pool = pool_for(backend, preconnect=True)  # its connects fail: nothing is opened
        try:
            deadline = time.monotonic() + 10
            while len(backend.forked) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(pool._threads) == threads, spare
            assert pool.preconnect is preconnect, spare
        finally:
            pool.close()
