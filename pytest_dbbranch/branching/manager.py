"""Branch life cycle without pytest: templates, forks, drops.

The pytest fixtures, the ``dbbranch`` command line and a user's script all go through a
``BranchManager``, so behaviour (naming, tagging, the migrate-once template protocol) is
defined once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from .. import names
from ..backends import Backend, Tag, backend_key, open_backend, run_lock, use_lock
from ..conninfo import ServerAddress
from ..errors import ConfigError, DbBranchError, ParentMissingError
from ..migrations import load_migrator
from ..progress import Progress
from ..server.embedded import EmbeddedServer, stale_clusters
from ..settings import Settings
from .branch import Branch, RollbackBranch
from .cleanup import (
    Garbage,
    collect,
    collect_orphans,
    find_garbage,
    find_orphans,
    liveness,
    stale_templates,
)
from .clients import SavepointConnection
from .lakebase_run import LakebaseRun, inner_settings
from .pool import BackgroundDrops, WarmPool
from .stats import Stats
from .templates import TemplatePlan, ensure_template

log = logging.getLogger("pytest_dbbranch")


class BranchManager:
    """Creates and drops branches for one run (``run_id``) in one process (``worker_id``).

    Thread-safe: a background pool may fork while a test drops. Use it as a context manager
    (or call ``close``) so admin connections close and the embedded server can stop.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        run_id: str | None = None,
        worker_id: str | None = None,
        stats: Stats | None = None,
        reap_on_start: bool = True,
        progress: Progress | None = None,
        background_drops: bool = False,
    ) -> None:
        self.settings = settings
        #: Where the steps of a long build are reported (silent by default).
        self.progress = progress or Progress()
        self.reap_on_start = reap_on_start
        self.run_id = run_id or names.new_run_id()
        self.worker_id = worker_id
        self.stats = stats or Stats()
        self._mutex = threading.RLock()
        self._backends: dict[tuple[str, str | None], Backend] = {}
        self._backend_failures: dict[tuple[str, str | None], DbBranchError] = {}
        #: Per-worker branches that the rollback isolation mode works inside.
        self._worker_branches: dict[str, tuple[str, Backend]] = {}
        self._worker_branch_owners: list[tuple[str, Backend]] = []
        self._pools: dict[str, WarmPool] = {}
        #: Drops used branches behind the tests (the plugin's choice); a script's ``release``
        #: has dropped the branch when it returns.
        self._drops = BackgroundDrops(self.stats, limit=4 if background_drops else 0)
        self._shared_connections: dict[str, SavepointConnection] = {}
        self._embedded: EmbeddedServer | None = None
        self._templates: dict[tuple[Any, ...], TemplatePlan] = {}
        self._failures: dict[tuple[Any, ...], DbBranchError] = {}
        self.kept: list[Branch] = []
        #: The xdist controller, or pytest without xdist: it makes (and deletes) the run's
        #: Lakebase branch; workers attach to it.
        self.owns_run = worker_id in (None, "master")
        self._lakebase: LakebaseRun | None = None
        #: Settings of every template the run will fork, when known before the first one is
        #: asked for (the prebuild): a Lakebase template branch holds them all.
        self._wanted: list[Settings] = []
        #: Things a user should know about this run (where the embedded server's data went).
        self.notes: list[str] = []
        #: Function-scope branches still to be asked for, when the caller knows (``expect``).
        self._expected_left: int | None = None

    def expect(self, function_branches: int | None) -> None:
        """Say how many function-scope branches will be asked for (pytest counts them at
        collection; under xdist each worker counts them all, an upper bound): the warm pool
        forks no branch ahead that no test will take."""
        with self._mutex:
            self._expected_left = function_branches

    def _expected(self) -> int | None:
        return self._expected_left

    def __enter__(self) -> BranchManager:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # -- backends ---------------------------------------------------------------------------

    def backend(self, settings: Settings | None = None) -> Backend:
        """The backend for these settings, opened once per run and process.

        Side effect, on the first call for a server: branches of this machine's dead runs
        are reaped (see ``reap``), unless the manager was made with ``reap_on_start=False``.
        """
        settings = settings or self.settings
        key = backend_key(settings)
        with self._mutex:
            backend = self._backends.get(key)
            if backend is None:
                # A server that refused us once is not retried by every test of the run.
                if key in self._backend_failures:
                    raise self._backend_failures[key]
                try:
                    if settings.effective_backend == "lakebase":
                        backend = self._lakebase_backend(settings)
                    else:
                        backend = open_backend(
                            settings, lock_root=self._lock_root(), embedded=self._lease_embedded
                        )
                except DbBranchError as exc:
                    self._backend_failures[key] = exc
                    raise
                self._backends[key] = backend
                # Held for as long as this process lives: other runs know we are alive.
                backend.hold(run_lock(self.run_id))
                if self.reap_on_start and backend.cheap_listing:
                    self.reap(backend)
            return backend

    def want(self, variants: list[Settings]) -> None:
        """Say which templates the run will fork before asking for the first: on Lakebase they
        are all built in one template branch, so a run needs one Lakebase branch."""
        self._wanted = list(variants)

    def lakebase(self, settings: Settings | None = None) -> LakebaseRun:
        """The run's Lakebase branch (not made yet: see ``backend``)."""
        settings = settings or self.settings
        with self._mutex:
            if self._lakebase is None:
                from ..backends import lakebase_config
                from ..backends.lakebase import LakebaseProject

                project = LakebaseProject(lakebase_config(settings))
                self._lakebase = LakebaseRun(
                    project,
                    run_id=self.run_id,
                    owns=self.owns_run,
                    lock_folder=self._lock_root() / names.short_hash(project.server_key, 10),
                    stats=self.stats,
                    progress=self.progress,
                )
            return self._lakebase

    def _lakebase_backend(self, settings: Settings) -> Backend:
        """On Lakebase the branches of tests are databases inside the run's branch."""
        run = self.lakebase(settings)
        if self.owns_run:
            wanted = [v for v in self._wanted if v.effective_backend == "lakebase"] or [settings]
            run.start(wanted, self._build_templates)
        else:
            run.attach()
        return run.backend(settings.strategy)

    def _build_templates(self, backend: Backend, variants: list[Settings]) -> None:
        for settings in variants:
            plan = TemplatePlan(settings, backend)
            backend.hold(use_lock(plan.name))
            ensure_template(plan, backend, run_id=self.run_id, stats=self.stats, progress=self.progress)

    def _for_plan(self, settings: Settings) -> Settings:
        """Inside a Lakebase branch the source is a database of the branch (or a dump)."""
        if settings.effective_backend != "lakebase":
            return settings
        return inner_settings(settings, settings.lakebase_database)

    def reap(self, backend: Backend) -> None:
        """Drop branches whose run died (``kill -9``, a lost CI runner, a cancelled job), and
        untagged leftovers of a kill between create and tag.

        Only one process of a run does it (the controller or the first xdist worker), and
        only for runs it can prove dead: on PostgreSQL, runs whose run lock nobody holds,
        wherever they ran; elsewhere, runs whose process is gone from this host.
        """
        if self.worker_id not in (None, "master", "gw0"):
            return
        records = backend.list_ours(sizes=False)
        garbage = [
            item
            for item in find_garbage(records, run_alive=liveness(backend), current_runs=[self.run_id])
            if item.record.tag.kind == "branch" and item.cause == "dead-run"
        ]
        deleted, _failed = collect(backend, garbage)
        orphans, _failed_orphans = collect_orphans(backend, find_orphans(backend))
        self.stats.branches_reaped += len(deleted) + len(orphans)

    def server_address(self, settings: Settings | None = None) -> ServerAddress:
        """The PostgreSQL server this run uses: the configured URL, or the embedded server
        (started if needed). The Lakebase emulator is backed by it."""
        settings = settings or self.settings
        if settings.url:
            return ServerAddress.parse(settings.url, settings.origin("url"))
        return self._lease_embedded(settings)[0]

    def _lease_embedded(self, settings: Settings | None = None) -> tuple[ServerAddress, EmbeddedServer]:
        settings = settings or self.settings
        with self._mutex:
            if self._embedded is None:
                base = settings.resolve_path(settings.embedded_dir) if settings.embedded_dir else None
                self._embedded = EmbeddedServer(base, idle=settings.effective_embedded_idle())
                if self._embedded.note:
                    self.notes.append(self._embedded.note)
            return self._embedded.acquire(self._registration), self._embedded

    def stale_embedded_clusters(self) -> list[Path]:
        """Other clusters beside the embedded server's own that nothing uses (for gc)."""
        if self._embedded is None:
            return []
        return stale_clusters(self._embedded.base, self._embedded.home)

    @property
    def _registration(self) -> str:
        return f"{self.run_id}-{names.worker_code(self.worker_id)}-{os.getpid()}"

    @staticmethod
    def _lock_root() -> Path:
        return Path(tempfile.gettempdir()) / f"pytest-dbbranch-{os.getuid()}" / "locks"

    # -- templates --------------------------------------------------------------------------

    def template(self, settings: Settings | None = None) -> str:
        """Name of the sealed, migrated template for these settings, building it if needed."""
        return self.plan(settings).name

    def plan(self, settings: Settings | None = None) -> TemplatePlan:
        """The template for these settings, found or built once per run and process."""
        settings = settings or self.settings
        key = self._plan_key(settings)
        with self._mutex:
            if key in self._templates:
                return self._templates[key]
            if key in self._failures:
                raise self._failures[key]
            try:
                backend = self.backend(settings)
                plan = TemplatePlan(self._for_plan(settings), backend)
                # Before looking: from now on no other run drops it while this one may fork.
                backend.hold(use_lock(plan.name))
                ensure_template(plan, backend, run_id=self.run_id, stats=self.stats, progress=self.progress)
            except DbBranchError as exc:
                self._failures[key] = exc
                raise
            self._drop_stale_templates(plan, backend)
            self._templates[key] = plan
            return plan

    @staticmethod
    def _plan_key(settings: Settings) -> tuple[Any, ...]:
        return (
            settings.url,
            settings.source,
            settings.migrations,
            settings.alembic_ini,
            settings.revision,
            str(settings.root),
        )

    def _drop_stale_templates(self, plan: TemplatePlan, backend: Backend) -> None:
        """Older templates of the group go, unless a live run still forks from them."""
        stale = [
            Garbage(record, "stale-template", f"replaced by {best.name}")
            for record, best in stale_templates(backend.list_ours(sizes=False))
            if record.tag.group == plan.group
        ]
        collect(backend, stale)

    def forget_failure(self, settings: Settings) -> None:
        """Let the next ``plan`` try again (and word its error for its own caller)."""
        with self._mutex:
            self._failures.pop(self._plan_key(settings), None)

    def _forget_plan(self, settings: Settings) -> None:
        with self._mutex:
            self._templates.pop(self._plan_key(settings), None)

    # -- branches ---------------------------------------------------------------------------

    def create(
        self,
        settings: Settings | None = None,
        *,
        scope: str = "function",
        node_id: str = "script",
        fixture_name: str = "",
    ) -> Branch:
        """A new isolated branch of the migrated template, per the scope's isolation mode."""
        settings = settings or self.settings
        plan = self.plan(settings)
        backend = self.backend(settings)
        isolation = settings.isolation_for(scope)
        name = names.branch_name(self.run_id, self.worker_id, scope, node_id, fixture_name)
        if isolation == "lakebase_branch":
            return self._lakebase_branch(settings, plan, name)
        if isolation == "rollback":
            parent, parent_backend = self._worker_branch(plan.name, backend)
            rollback = RollbackBranch(
                parent, parent_backend, settings, settings.revision, upgrader=self._upgrade
            )
            rollback.shared = self._shared_connections.get(parent)
            return rollback
        pool = None
        if scope == "function" and isolation == "branch":
            with self._mutex:
                if self._expected_left is not None:
                    self._expected_left = max(0, self._expected_left - 1)
            pool = self._pool(settings, plan, backend)
            self._drops.prepare(backend)
        if pool is not None:
            ready = pool.take()
            if ready is not None:
                # Its tag (run, pid, parent) is already right; it takes ``name`` only if kept.
                branch = Branch(ready.name, backend, settings, settings.revision, upgrader=self._upgrade)
                branch.readable_name = name
                branch.pool = pool
                if ready.connection is not None:
                    branch.adopt(ready.connection)
                return branch
        parent, target = plan.name, backend
        tag = Tag(kind="branch", run=self.run_id, parent=parent, fingerprint=plan.fingerprint)
        try:
            with self.stats.timed("fork_seconds"):
                target.fork(name, parent, tag)
        except ParentMissingError:
            if parent != plan.name:
                raise
            # Dropped under us (by hand, or by a run that could not see we use it): rebuild
            # once and go on.
            self._forget_plan(settings)
            plan = self.plan(settings)
            tag = Tag(kind="branch", run=self.run_id, parent=plan.name, fingerprint=plan.fingerprint)
            target.fork(name, plan.name, tag)
        self.stats.increment("branches_created")
        branch = Branch(name, target, settings, settings.revision, upgrader=self._upgrade)
        branch.pool = pool
        return branch

    def _lakebase_branch(self, settings: Settings, plan: TemplatePlan, name: str) -> Branch:
        if settings.effective_backend != "lakebase":
            raise ConfigError(
                "isolation lakebase_branch needs the Lakebase backend (set dbbranch_lakebase_project)"
            )
        run = self.lakebase(settings)
        own: Any = run.test_branches(plan.name)
        tag = Tag(kind="branch", run=self.run_id, parent=plan.name, fingerprint=plan.fingerprint)
        with self.stats.timed("fork_seconds"):
            own.fork(name, run.parent_of_tests(), tag)
        self.stats.increment("branches_created")
        return Branch(name, own, settings, settings.revision, upgrader=self._upgrade)

    def _pool(self, settings: Settings, plan: TemplatePlan, backend: Backend) -> WarmPool | None:
        """The worker's warm pool for the template, where the backend affords one (Lakebase
        branches are budgeted and cost money while they wait)."""
        size = settings.effective_pool_size()
        if size <= 0 or not backend.warm_pool:
            return None
        with self._mutex:
            pool = self._pools.get(plan.name)
            if pool is None:
                if self._expected_left == 0:
                    return None  # the last test (a one-test rerun): nothing to fork ahead for
                pool = WarmPool(
                    backend.sibling,
                    template=plan.name,
                    fingerprint=plan.fingerprint,
                    size=size,
                    run_id=self.run_id,
                    worker_id=self.worker_id,
                    stats=self.stats,
                    wanted=self._expected,
                )
                self._pools[plan.name] = pool
            return pool

    def _worker_branch(self, template: str, backend: Backend) -> tuple[str, Backend]:
        """This worker's own branch of the template for rollback isolation, created once and
        dropped at close."""
        key = f"{template}:rollback"
        with self._mutex:
            if key in self._worker_branches:
                return self._worker_branches[key]
            name = names.branch_name(self.run_id, self.worker_id, "worker", key)
            tag = Tag(kind="branch", run=self.run_id, parent=template)
            with self.stats.timed("fork_seconds"):
                backend.fork(name, template, tag)
            self.stats.increment("branches_created")
            found = (name, backend)
            self._worker_branches[key] = found
            self._worker_branch_owners.append((name, backend))
            return found

    def release(self, branch: Branch) -> bool:
        """Close the branch's clients, then drop it unless the keep policy says otherwise.

        Returns True when the branch was kept.
        """
        branch.close()
        if isinstance(branch, RollbackBranch):
            if branch.shared is not None:
                self._shared_connections[branch.name] = branch.shared
            return False  # the transaction was rolled back; the worker's branch lives on
        backend = branch.backend
        keep = branch.settings.keep
        if keep == "always" or (keep == "failed" and branch.failed):
            self._give_readable_name(branch)
            record = backend.describe(branch.name)
            if record is not None:
                backend.retag(branch.name, replace(record.tag, kept=True))
            self.stats.branches_kept += 1
            self.kept.append(branch)
            return True
        if branch.pool is not None and branch.adopted_unused:
            branch.pool.unused_connection()
        if self._drops.give(backend, branch.name):
            return False
        with self.stats.timed("drop_seconds"):
            backend.drop(branch.name)
        self.stats.increment("branches_dropped")
        return False

    def _give_readable_name(self, branch: Branch) -> None:
        """A kept pool branch takes its test's name, which the run's report prints."""
        if branch.readable_name == branch.name:
            return
        try:
            branch.backend.rename(branch.name, branch.readable_name)
        except (DbBranchError, psycopg.Error) as exc:
            log.warning("pytest-dbbranch: kept %s under its pool name: %s", branch.name, exc)
        else:
            branch.name = branch.readable_name

    @contextlib.contextmanager
    def branch(
        self, settings: Settings | None = None, *, scope: str = "function", node_id: str = "script"
    ) -> Iterator[Branch]:
        """``with manager.branch() as b:`` for scripts."""
        branch = self.create(settings, scope=scope, node_id=node_id)
        try:
            yield branch
        finally:
            self.release(branch)

    @contextlib.contextmanager
    def scratch(self, parent: str, label: str, settings: Settings | None = None) -> Iterator[ServerAddress]:
        """A throwaway branch of ``parent`` for a tool to work on (a migration check, a schema
        read), dropped afterwards whatever happens. Sealed templates accept no connections
        and a source is never connected to, so tools read copies."""
        backend = self.backend(settings)
        name = names.branch_name(self.run_id, self.worker_id, "session", f"{label}:{parent}")
        backend.fork(name, parent, Tag(kind="branch", run=self.run_id, parent=parent))
        try:
            yield backend.address(name)
        finally:
            backend.drop(name)

    def _upgrade(self, branch: Branch, revision: str) -> None:
        migrator = load_migrator(branch.settings)
        if migrator is None:
            raise ConfigError("upgrade() needs migrations (dbbranch_alembic_ini or dbbranch_migrations)")
        migrator.resolve(revision, "upgrade()")
        with self.stats.timed("migrate_seconds"):
            migrator.upgrade(branch.backend.address(branch.name), revision)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close admin connections and let the embedded server stop if nobody else uses it."""
        with self._mutex:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
            self._drops.close()
            for conn in self._shared_connections.values():
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._shared_connections.clear()
            for name, backend in reversed(self._worker_branch_owners):
                try:
                    with self.stats.timed("drop_seconds"):
                        backend.drop(name)
                    self.stats.increment("branches_dropped")
                except Exception as exc:
                    log.warning("pytest-dbbranch: could not drop the worker branch %s: %s", name, exc)
            self._worker_branch_owners.clear()
            self._worker_branches.clear()
            for backend in self._backends.values():
                try:
                    backend.close()
                except Exception as exc:
                    log.warning("pytest-dbbranch: closing the %s backend failed: %s", backend.kind, exc)
            self._backends.clear()
            if self._lakebase is not None:
                try:
                    self._lakebase.finish()
                except Exception as exc:
                    log.warning("pytest-dbbranch: could not delete the run's Lakebase branch: %s", exc)
                self._lakebase = None
            if self._embedded is not None:
                self._embedded.release(self._registration)
                self._embedded = None
