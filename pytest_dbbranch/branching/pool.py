"""A warm pool: branches forked ahead of the tests that will use them, dropped behind them.

A fork (≈10 ms), a first connection (≈5 ms) and a drop (≈4 ms) on the embedded server are
what a function-scope branch costs a test. Two background threads, each with its own server
connection, fork the next branches and open their first connection while the current test
runs; ``BackgroundDrops`` drops used ones after it, so on a hit the test sees neither (about
1 ms). At ``-n 2`` on 2 cores, one thread that forked and dropped had 143 of 300 branches
ready, and a test still paid a rename and a connect on a hit (20 ms median); now about 195
of 300 are ready and the median test sees 4-6 ms.

A pool branch keeps its pool name while its test runs (a database with a session open
cannot be renamed, and renaming cost the test a catalog write); a kept branch gets its
test's readable name when it is kept. Pool branches carry the normal tag (run, pid), so the
reaper and ``gc`` clean them up after a crash like any other branch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from .. import names
from ..backends import Backend, Tag, connect
from .stats import Stats

log = logging.getLogger("pytest_dbbranch")


@dataclass
class Ready:
    """A pool branch handed to a test, with the connection the pool opened to it (None when
    tests of this pool do not use their first connection)."""

    name: str
    connection: psycopg.Connection[Any] | None


class WarmPool:
    #: Threads forking at once, each with its own server connection: a fork waits on the
    #: server (checkpoints, file copies), so two overlap where one kept tests waiting.
    THREADS = 2
    #: Connections left free for everything else (psql, the application's own pools).
    RESERVE = 10

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
        wanted: Callable[[], int | None] | None = None,
        preconnect: bool = True,
    ) -> None:
        self.template = template
        self.size = size
        #: How many more branches the caller expects to ask for (None: unknown). A branch
        #: forked ahead for no test is a fork and a drop for nothing, at the end of every run
        #: (a one-test rerun paid both, ~25 ms).
        self._wanted = wanted
        #: Open the first connection ahead too, until a test leaves one unused (a test that
        #: only uses an engine): then stop, it would be a connection for nothing each time.
        self.preconnect = preconnect
        self._make_backend = make_backend
        self._backends: list[Backend] = []
        self._fingerprint = fingerprint
        self._run_id = run_id
        self._worker_id = worker_id
        self._stats = stats
        self._ready: deque[Ready] = deque()
        #: Ready branches whose connection the server closed: dropped at close.
        self._set_aside: list[str] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._failed: BaseException | None = None
        self._serial = itertools.count()
        #: Branches being made now, by all threads.
        self._in_flight = 0
        # The first thread starts the others once it knows the server has room for them.
        self._threads = [self._thread(0)]
        self._threads[0].start()

    def _thread(self, index: int) -> threading.Thread:
        name = f"dbbranch-pool-{self.template}-{index}"
        return threading.Thread(target=self._loop, args=(index == 0,), name=name, daemon=True)

    def _fit_to_server(self, backend: Backend) -> None:
        """Each worker's pool adds a forking thread and ``size`` waiting sessions to the
        server's connections (7 a worker in all, against 4 without the pool's extras): where
        ``max_connections`` leaves less room than every worker needs, keep one thread and
        open no connection ahead, rather than have a test's own connection refused."""
        spare = backend.spare_connections()
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        extra = self.THREADS - 1 + self.size
        if spare is not None and spare < workers * extra + self.RESERVE:
            self.preconnect = False
            log.info("pytest-dbbranch: %s spare connections: the warm pool opens none ahead", spare)
            return
        with self._cond:
            if self._stopping:
                return
            more = [self._thread(i) for i in range(1, max(1, min(self.size, self.THREADS)))]
            self._threads += more
        for thread in more:
            thread.start()

    def take(self) -> Ready | None:
        """A ready branch of the template, or None (the caller forks one itself). A hit asks
        the server nothing, so a branch whose connection the server has closed (a restart, a
        stopped server) is set aside, not handed out: the caller's own fork then meets the
        server as it is now and says so."""
        with self._cond:
            while self._ready:
                ready = self._ready.popleft()
                self._cond.notify_all()
                if ready.connection is None or _still_open(ready.connection):
                    self._stats.increment("pool_hits")
                    return ready
                with contextlib.suppress(psycopg.Error):
                    ready.connection.close()
                self._set_aside.append(ready.name)
            self._stats.increment("pool_misses")
            return None

    def unused_connection(self) -> None:
        """A test left the connection opened for it unused: open none ahead from now on."""
        self.preconnect = False

    def close(self) -> None:
        """Stop forking, then drop every branch the pool still holds (it never outlives the run)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=60)
        with self._cond:
            leftovers = list(self._ready)
            self._ready.clear()
            backends = list(self._backends)
            self._backends.clear()
        for ready in leftovers:
            if ready.connection is not None:
                with contextlib.suppress(psycopg.Error):
                    ready.connection.close()
        names_left = [r.name for r in leftovers] + self._set_aside
        self._set_aside = []
        for backend in backends:
            _drop_and_close(backend, names_left, self._stats, "the warm pool could not drop")
            names_left = []

    def _target(self) -> int:
        wanted = self._wanted() if self._wanted is not None else None
        return self.size if wanted is None else max(0, min(self.size, wanted))

    def _loop(self, first: bool) -> None:
        try:
            backend = self._make_backend()
            with self._cond:
                self._backends.append(backend)
            if first:
                self._fit_to_server(backend)
            while True:
                with self._cond:
                    while not self._stopping and len(self._ready) + self._in_flight >= self._target():
                        self._cond.wait()
                    if self._stopping:
                        return
                    self._in_flight += 1
                    serial = next(self._serial)
                ready = None
                try:
                    ready = self._make(backend, serial)
                finally:
                    with self._cond:  # one step: a sibling thread must never see neither
                        self._in_flight -= 1
                        if ready is not None:
                            self._ready.append(ready)
                        self._cond.notify_all()
        except BaseException as exc:  # the tests fall back to forking themselves
            with self._cond:
                self._failed = exc
                self._cond.notify_all()

    def _make(self, backend: Backend, serial: int) -> Ready:
        name = names.branch_name(self._run_id, self._worker_id, "function", f"pool-{serial}", "pool")
        tag = Tag(kind="branch", run=self._run_id, parent=self.template, fingerprint=self._fingerprint)
        backend.fork(name, self.template, tag)
        self._stats.increment("branches_created")
        conn = None
        if self.preconnect:
            try:
                conn = connect(backend, name)
            except psycopg.Error:
                conn = None  # the test connects itself and meets the error, if any
        return Ready(name, conn)


def _still_open(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection the server has not closed, without a round trip: an idle session
    receives nothing unless the server ends it (the FATAL message, then end of file), so a
    readable socket means it is gone."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


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

    def prepare(self, backend: Backend) -> None:
        """Open the queue's connection now, while the test runs, rather than when its first
        branch comes back (a one-test run waited for that connection at its very end)."""
        self._queue(backend)

    def give(self, backend: Backend, name: str) -> bool:
        """Queue ``name`` (its clients are closed); False when the caller must drop it."""
        queue = self._queue(backend)
        return queue is not None and queue.put(name)

    def _queue(self, backend: Backend) -> _DropQueue | None:
        if self.limit <= 0 or not backend.warm_pool:
            return None  # a branch that costs a slot of a limit (Lakebase's): dropped at once
        with self._lock:
            queue = self._queues.get(backend.server_key)
            if queue is None:
                queue = _DropQueue(backend.sibling, self._stats, self.limit)
                self._queues[backend.server_key] = queue
            return queue

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
