"""A warm pool: branches forked ahead of the tests that will use them, dropped behind them.

A fork (≈7 ms) and a drop (≈4 ms) on the embedded server are most of what a function-scope
branch costs a test. A background thread with its own server connection forks the next
branches while the current test runs, and drops used branches after it, so the test sees a
rename (to its own readable name) and a connect. Pool branches carry the normal tag (run,
pid), so the reaper and ``gc`` clean them up after a crash like any other branch.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from .. import names
from ..backends import Backend, Tag
from .stats import Stats

log = logging.getLogger("pytest_dbbranch")


class WarmPool:
    def __init__(
        self,
        make_backend: Callable[[], Backend],
        *,
        template: str,
        fingerprint: str,
        size: int,
        run_id: str,
        worker_id: str | None,
        stats: Stats,
    ) -> None:
        self.template = template
        self.size = size
        self._make_backend = make_backend
        self._backend: Backend | None = None
        self._fingerprint = fingerprint
        self._run_id = run_id
        self._worker_id = worker_id
        self._stats = stats
        self._ready: deque[str] = deque()
        self._to_drop: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._failed: BaseException | None = None
        self._serial = itertools.count()
        self._thread = threading.Thread(target=self._loop, name=f"dbbranch-pool-{template}", daemon=True)
        self._thread.start()

    def take(self) -> str | None:
        """A ready branch of the template, or None (the caller forks one itself)."""
        with self._cond:
            if not self._ready:
                self._stats.increment("pool_misses")
                return None
            name = self._ready.popleft()
            self._stats.increment("pool_hits")
            self._cond.notify_all()
            return name

    def give_back(self, name: str) -> bool:
        """Drop ``name`` in the background (its clients are closed already). False when the
        pool has stopped or has enough to drop already: then the caller drops it."""
        with self._cond:
            if self._stopping or self._failed is not None or len(self._to_drop) >= self.size + 2:
                # Stopped, or the drops fall behind (a slow, durable server): the caller drops
                # it, so live copies never pile up.
                return False
            self._to_drop.append(name)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """Stop forking, then drop every branch the pool still holds (it never outlives the run)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        leftovers = list(self._ready) + list(self._to_drop)
        self._ready.clear()
        self._to_drop.clear()
        if self._backend is not None:
            _drop_and_close(self._backend, leftovers, self._stats, "the warm pool could not drop")

    def _loop(self) -> None:
        try:
            self._backend = self._make_backend()
            while True:
                with self._cond:
                    while not self._stopping and not self._to_drop and len(self._ready) >= self.size:
                        self._cond.wait()
                    if self._stopping:
                        return
                    # Drops first: they free the names and the disk the next forks need.
                    drop = self._to_drop.popleft() if self._to_drop else None
                if drop is not None:
                    self._backend.drop(drop)
                    self._stats.increment("branches_dropped")
                    continue
                name = names.branch_name(
                    self._run_id, self._worker_id, "function", f"pool-{next(self._serial)}", "pool"
                )
                tag = Tag(
                    kind="branch", run=self._run_id, parent=self.template, fingerprint=self._fingerprint
                )
                self._backend.fork(name, self.template, tag)
                self._stats.increment("branches_created")
                with self._cond:
                    self._ready.append(name)
        except BaseException as exc:  # the tests fall back to forking themselves
            with self._cond:
                self._failed = exc


class BackgroundDrops:
    """Drops used branches behind the tests, one thread and connection per server.

    Without a warm pool a test's teardown used to wait for the drop (a catalog lookup, a
    wait for its backends to exit, ``DROP DATABASE``: 5-15 ms, most of the plugin's own
    cost on top of the raw SQL floor). Here the teardown only closes the clients and queues
    the name. Bounded: with ``limit`` drops pending, the caller drops itself, so live copies
    never pile up on the disk. ``close`` (at the end of the session, Ctrl-C and SIGTERM
    included) waits for the queue to empty. A process killed with -9 leaves the queued
    branches tagged with its run, which the next run's reaper removes like any other branch
    of a dead run.
    """

    def __init__(self, stats: Stats, *, limit: int = 4) -> None:
        self._stats = stats
        self.limit = limit
        self._queues: dict[str, _DropQueue] = {}
        self._lock = threading.Lock()

    def give(self, backend: Backend, name: str) -> bool:
        """Queue ``name`` (its clients are closed); False when the caller must drop it."""
        if self.limit <= 0 or not backend.warm_pool:
            return False  # a branch that costs a slot of a limit (Lakebase's): drop it now
        with self._lock:
            queue = self._queues.get(backend.server_key)
            if queue is None:
                queue = _DropQueue(backend.sibling, self._stats, self.limit)
                self._queues[backend.server_key] = queue
        return queue.put(name)

    def close(self) -> None:
        with self._lock:
            queues = list(self._queues.values())
            self._queues.clear()
        for queue in queues:
            queue.close()


class _DropQueue:
    def __init__(self, make_backend: Callable[[], Backend], stats: Stats, limit: int) -> None:
        self._make_backend = make_backend
        self._backend: Backend | None = None
        self._stats = stats
        self._limit = limit
        self._names: deque[str] = deque()
        self._busy = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="dbbranch-drops", daemon=True)
        self._thread.start()

    def put(self, name: str) -> bool:
        with self._cond:
            if self._stopping or self._failed is not None or len(self._names) + self._busy >= self._limit:
                return False
            self._names.append(name)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """Drop what is queued, then stop the thread and close its connection."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=120)
        leftovers = list(self._names)
        self._names.clear()
        if self._backend is not None:  # the thread failed: finish on this thread
            _drop_and_close(self._backend, leftovers, self._stats, "could not drop")

    def _loop(self) -> None:
        try:
            self._backend = self._make_backend()
            while True:
                with self._cond:
                    while not self._names and not self._stopping:
                        self._cond.wait()
                    if not self._names:
                        return  # stopping, and everything is dropped
                    name = self._names.popleft()
                    self._busy = 1
                started = time.perf_counter()
                try:
                    self._backend.drop(name)
                except Exception as exc:  # left for the reaper, as a failed teardown would be
                    log.warning("pytest-dbbranch: could not drop %s: %s", name, exc)
                else:
                    self._stats.increment("branches_dropped")
                    self._stats.add_seconds("drop_seconds", time.perf_counter() - started)
                finally:
                    with self._cond:
                        self._busy = 0
        except BaseException as exc:  # no connection: the callers drop on their own from now on
            with self._cond:
                self._failed = exc
                self._names.clear()  # the run's reaper finds them: they carry its tag
            log.warning("pytest-dbbranch: background drops stopped: %s", exc)


def _drop_and_close(backend: Backend, names: Iterable[str], stats: Stats, failure: str) -> None:
    """What a background thread left: dropped here, a failure logged (the session is ending,
    and the reaper of the next run takes what is left), then the thread's connection closed."""
    for name in names:
        try:
            backend.drop(name)
        except Exception as exc:
            log.warning("pytest-dbbranch: %s %s: %s", failure, name, exc)
        else:
            stats.increment("branches_dropped")
    backend.close()
