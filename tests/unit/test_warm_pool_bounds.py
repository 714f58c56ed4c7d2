"""The warm pool never holds more live copies than it was sized for: when its background
drops fall behind (a durable server takes about a second per DROP), a branch handed back is
dropped by the caller instead of joining an ever longer queue (the review counted 17 live
branches 6 s into a 22-test run). Driven with a backend double whose creation the test
holds back, so the pool's thread is busy and nothing it queues is dropped meanwhile."""

from __future__ import annotations

import threading
from typing import Any

from pytest_dbbranch.branching.pool import WarmPool
from pytest_dbbranch.branching.stats import Stats


class RecordingBackend:
    """Forks and drops by name, instantly."""

    def __init__(self) -> None:
        self.forked: list[str] = []
        self.dropped: list[str] = []

    def fork(self, name: str, parent: str, tag: Any) -> None:
        self.forked.append(name)

    def drop(self, name: str) -> None:
        self.dropped.append(name)

    def close(self) -> None:
        pass


def test_give_back_refuses_once_size_plus_two_drops_are_pending() -> None:
    backend = RecordingBackend()
    released = threading.Event()

    def make_backend() -> RecordingBackend:
        assert released.wait(30), "the test never released the pool's backend"
        return backend

    pool = WarmPool(
        make_backend,  # type: ignore[arg-type]  # a double of the Backend protocol
        template="dbbt-t",
        fingerprint="f",
        size=1,
        run_id="r",
        worker_id=None,
        stats=Stats(),
    )
    try:
        accepted = [pool.give_back(f"dbb-used-{i}") for i in range(6)]
        assert accepted == [True, True, True, False, False, False]
    finally:
        released.set()
        pool.close()
    # What it accepted it dropped (in the background or at close); the rest was the caller's.
    assert {"dbb-used-0", "dbb-used-1", "dbb-used-2"} <= set(backend.dropped)
    assert not {"dbb-used-3", "dbb-used-4", "dbb-used-5"} & set(backend.dropped)
    assert set(backend.forked) <= set(backend.dropped), "a pooled branch outlived the pool"


def test_a_stopped_pool_gives_everything_back_to_the_caller() -> None:
    pool = WarmPool(
        RecordingBackend,  # type: ignore[arg-type]
        template="dbbt-t",
        fingerprint="f",
        size=2,
        run_id="r",
        worker_id=None,
        stats=Stats(),
    )
    pool.close()
    assert pool.give_back("dbb-late") is False
