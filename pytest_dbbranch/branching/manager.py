"""Branch life cycle without pytest: templates, forks, drops.

The pytest fixtures, the ``dbbranch`` command line and a user's script all go through a
``BranchManager``, so behaviour (naming, tagging, the migrate-once template protocol) is
defined once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import psycopg

from .. import names
from ..backends.base import Backend, BranchRecord, Tag, iter_stale_templates
from ..backends.postgres import PostgresBackend
from ..conninfo import ServerAddress
from ..errors import BranchExistsError, ConfigError, DbBranchError
from ..migrations import alembic as migrate
from ..server.embedded import EmbeddedServer
from ..settings import Settings
from .branch import Branch, RollbackBranch
from .fingerprint import fingerprint, project_key
from .pool import WarmPool
from .sources import Source, parse_source
from .stats import Stats


class TemplatePlan:
    """Everything needed to build or find one template, computed without touching it."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.source: Source = parse_source(settings)
        ini = settings.alembic_ini_path()
        self.project = migrate.load_project(ini, settings.origin("alembic_ini")) if ini else None
        if self.project is None and settings.revision != "head":
            raise ConfigError(
                f"{settings.origin('revision')}: revision {settings.revision!r} is set but no "
                "alembic.ini is configured (dbbranch_alembic_ini)"
            )
        self.target = settings.revision
        revisions = self.project.resolve(self.target, settings.origin("revision")) if self.project else ()
        files: list[tuple[str, Path]] = []
        if self.project is not None:
            base = self.project.script_dir
            files = [(str(path.relative_to(base)), path) for path in self.project.files()]
        identity = self.source.identity
        if backend.kind == "lakebase":
            identity += f"@{settings.lakebase_source_time or 'now'}"
        self.fingerprint = fingerprint(
            source_identity=identity,
            revisions=revisions,
            server_version=backend.server_version,
            alembic_files=files,
            alembic_ini=self.project.ini_path if self.project else None,
        )
        self.project_key = project_key(
            str(self.project.ini_path.resolve()) if self.project else "-",
            self.source.kind + ":" + self.source.location,
            self.target,
        )
        self.name = names.template_name(self.project_key, self.fingerprint)


class BranchManager:
    """Creates and drops branches for one run (``run_id``) in one process (``worker_id``).

    Thread-safe: a background pool may fork while a test drops.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        run_id: str | None = None,
        worker_id: str | None = None,
        stats: Stats | None = None,
        reap_on_start: bool = True,
    ) -> None:
        self.settings = settings
        self.reap_on_start = reap_on_start
        self.run_id = run_id or names.new_run_id()
        self.worker_id = worker_id
        self.stats = stats or Stats()
        self._mutex = threading.RLock()
        self._backends: dict[tuple[str, str | None], Backend] = {}
        self._backend_failures: dict[tuple[str, str | None], DbBranchError] = {}
        #: Per-worker parent branches for the clone and rollback isolation modes.
        self._hosts: dict[str, tuple[str, Backend]] = {}
        self._host_branches: list[tuple[str, Backend, Backend | None]] = []
        self._pools: dict[str, WarmPool] = {}
        self._shared_connections: dict[str, psycopg.Connection[Any]] = {}
        self._embedded: EmbeddedServer | None = None
        self._templates: dict[tuple[Any, ...], str] = {}
        self._failures: dict[tuple[Any, ...], DbBranchError] = {}
        self._plans: dict[str, TemplatePlan] = {}
        self.kept: list[Branch] = []

    # -- backends ---------------------------------------------------------------------------

    def backend(self, settings: Settings | None = None) -> Backend:
        settings = settings or self.settings
        kind = settings.backend_name
        key = (kind, settings.lakebase_project if kind == "lakebase" else settings.url)
        with self._mutex:
            backend = self._backends.get(key)
            if backend is None:
                # A server that refused us once is not retried by every test of the run.
                if key in self._backend_failures:
                    raise self._backend_failures[key]
                try:
                    if kind == "lakebase":
                        from ..backends.lakebase import LakebaseBackend

                        backend = LakebaseBackend(settings, lock_root=self._lock_root())
                    else:
                        address = self._address(settings)
                        reflink = not settings.url and self._embedded is not None and self._embedded.reflink
                        backend = PostgresBackend(address, strategy=settings.strategy, reflink=reflink)
                except DbBranchError as exc:
                    self._backend_failures[key] = exc
                    raise
                self._backends[key] = backend
                if self.reap_on_start and backend.kind == "postgres":
                    self.reap(backend)
            return backend

    def reap(self, backend: Backend) -> None:
        """Drop branches whose run died (``kill -9``, a lost CI runner) on this machine.

        Only one process of a run does it (the controller or the first xdist worker), and
        only for runs it can prove dead: their process is gone from this host.
        """
        from .cleanup import collect, find_garbage

        if self.worker_id not in (None, "master", "gw0"):
            return
        garbage = [
            item
            for item in find_garbage(backend.list_ours(), current_runs=[self.run_id])
            if item.record.tag.kind == "branch" and "is gone" in item.reason
        ]
        deleted, _failed = collect(backend, garbage)
        self.stats.branches_reaped += len(deleted)

    def _address(self, settings: Settings) -> ServerAddress:
        if settings.url:
            return ServerAddress.parse(settings.url, settings.origin("url"))
        if self._embedded is None:
            base = settings.resolve_path(settings.embedded_dir) if settings.embedded_dir else None
            self._embedded = EmbeddedServer(base)
        return self._embedded.acquire(self._registration)

    @property
    def _registration(self) -> str:
        return f"{self.run_id}-{names.worker_code(self.worker_id)}-{os.getpid()}"

    @staticmethod
    def _lock_root() -> Path:
        return Path(tempfile.gettempdir()) / f"pytest-dbbranch-{os.getuid()}" / "locks"

    def lock_dir(self, settings: Settings) -> Path:
        backend = self.backend(settings)
        if backend.kind == "postgres" and not settings.url and self._embedded is not None:
            folder = self._embedded.home / "locks"
        else:
            folder = self._lock_root() / names.short_hash(backend.server_key, 10)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- templates --------------------------------------------------------------------------

    def template(self, settings: Settings | None = None) -> str:
        """Name of the sealed, migrated template for these settings, building it if needed."""
        settings = settings or self.settings
        key = (settings.url, settings.source, settings.alembic_ini, settings.revision, str(settings.root))
        with self._mutex:
            if key in self._templates:
                return self._templates[key]
            if key in self._failures:
                raise self._failures[key]
            try:
                name = self._ensure_template(settings)
            except DbBranchError as exc:
                self._failures[key] = exc
                raise
            self._templates[key] = name
            return name

    def _ensure_template(self, settings: Settings) -> str:
        backend = self.backend(settings)
        plan = TemplatePlan(settings, backend)
        self._plans[plan.name] = plan
        if self._reusable(backend.describe(plan.name), settings):
            self.stats.template_hits += 1
            return plan.name
        lock = filelock.FileLock(str(self.lock_dir(settings) / f"{plan.name}.lock"))
        with lock, backend.lock("template:" + plan.name):
            # Whoever held the lock before us may have built it in the meantime.
            record = backend.describe(plan.name)
            if self._reusable(record, settings):
                self.stats.template_hits += 1
                return plan.name
            if record is not None and not self._abandoned(record, backend):
                # Being built on another machine that shares this project: wait for it.
                self._wait_for_template(plan.name, backend)
                self.stats.template_hits += 1
                return plan.name
            if record is not None:
                backend.drop(plan.name)  # half-built by a crash, or --dbbranch-rebuild
            elif backend.exists(plan.name):
                raise DbBranchError(
                    f"{plan.name!r} exists but was not created by pytest-dbbranch; rename or drop it yourself"
                )
            try:
                self._build(plan, backend)
            except BranchExistsError:
                self._wait_for_template(plan.name, backend)
                self.stats.template_hits += 1
                return plan.name
        self._drop_stale(plan, backend)
        return plan.name

    #: A template still unsealed this long after creation was abandoned by a dead builder.
    BUILD_TIMEOUT = 1800.0

    def _abandoned(self, record: BranchRecord, backend: Backend) -> bool:
        """With a global lock held, an unsealed template is a crash's leftover. Without one
        (Lakebase), it may be another machine's build in progress unless it is old, or ours."""
        if record.ready or backend.has_global_lock:
            return True
        too_old = time.time() - record.tag.created > self.BUILD_TIMEOUT
        return too_old or record.tag.run == self.run_id

    def _wait_for_template(self, name: str, backend: Backend) -> None:
        deadline = time.monotonic() + self.BUILD_TIMEOUT
        delay = 0.2
        while time.monotonic() < deadline:
            record = backend.describe(name)
            if record is not None and record.ready:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        raise DbBranchError(f"template {name} was not sealed within {self.BUILD_TIMEOUT:.0f}s")

    def _reusable(self, record: BranchRecord | None, settings: Settings) -> bool:
        """Sealed, and not due for a rebuild (``--dbbranch-rebuild`` rebuilds once per run)."""
        if record is None or not record.ready:
            return False
        return not settings.rebuild or record.tag.run == self.run_id

    def _build(self, plan: TemplatePlan, backend: Backend) -> None:
        restoring = (
            plan.source.kind == "dump"
            and backend.describe(names.source_name(plan.source.identity.removeprefix("dump:"))) is None
        )
        parent = backend.source_parent(plan.source, self.run_id)
        self.stats.sources_restored += int(restoring)
        tag = Tag(
            kind="template",
            run=self.run_id,
            parent=parent,
            fingerprint=plan.fingerprint,
            project=plan.project_key,
        )
        with self.stats.timed("fork_seconds"):
            backend.fork(plan.name, parent, tag)
        try:
            if plan.project is not None:
                with self.stats.timed("migrate_seconds"):
                    migrate.upgrade(plan.project, backend.address(plan.name), plan.target)
            backend.seal(plan.name, tag)
        except BaseException:
            with contextlib.suppress(Exception):
                backend.drop(plan.name)
            raise
        self.stats.template_builds += 1

    def _drop_stale(self, plan: TemplatePlan, backend: Backend) -> None:
        """Older templates of the same project are garbage; one still in use stays."""
        for record in iter_stale_templates(backend.list_ours(), plan.project_key, plan.name):
            with contextlib.suppress(Exception):
                backend.drop(record.name)

    # -- branches ---------------------------------------------------------------------------

    def create(
        self,
        settings: Settings | None = None,
        *,
        scope: str = "function",
        node_id: str = "script",
        salt: str = "",
    ) -> Branch:
        """A new isolated branch of the migrated template, per the scope's isolation mode."""
        settings = settings or self.settings
        template = self.template(settings)
        backend = self.backend(settings)
        isolation = settings.isolation_for(scope)
        name = names.branch_name(self.run_id, self.worker_id, scope, node_id, salt)
        fingerprint = self._plans[template].fingerprint if template in self._plans else ""
        if isolation == "rollback":
            host, host_backend = self._host(settings, template, backend, clone=False)
            rollback = RollbackBranch(host, host_backend, settings, self, settings.revision)
            rollback.shared = self._shared_connections.get(host)
            return rollback
        pool = self._pool(settings, template, backend, fingerprint) if scope == "function" else None
        if pool is not None and isolation == "branch":
            ready = pool.take()
            if ready is not None:
                # The pool branch's tag (run, pid, parent) is already right; the name is the news.
                with self.stats.timed("fork_seconds"):
                    assert isinstance(backend, PostgresBackend)
                    backend.rename(ready, name)
                branch = Branch(name, backend, settings, self, settings.revision)
                branch.pool = pool
                return branch
        parent, target = template, backend
        if isolation == "clone" and backend.kind != "postgres":
            # On PostgreSQL a branch already is a clone; elsewhere clone inside a worker's branch.
            parent, target = self._host(settings, template, backend, clone=True)
        tag = Tag(kind="branch", run=self.run_id, parent=parent, fingerprint=fingerprint)
        with self.stats.timed("fork_seconds"):
            target.fork(name, parent, tag)
        self.stats.increment("branches_created")
        branch = Branch(name, target, settings, self, settings.revision)
        branch.pool = pool if isolation == "branch" else None
        return branch

    def _pool(self, settings: Settings, template: str, backend: Backend, fingerprint: str) -> WarmPool | None:
        """The worker's warm pool for ``template`` (PostgreSQL only: Lakebase branches are
        budgeted and cost money while they wait)."""
        size = settings.effective_pool_size()
        if size <= 0 or not isinstance(backend, PostgresBackend):
            return None
        if settings.isolation_for("function") != "branch":
            return None
        with self._mutex:
            pool = self._pools.get(template)
            if pool is None:
                server, strategy, reflink = backend.server, settings.strategy, backend.reflink
                pool = WarmPool(
                    lambda: PostgresBackend(server, strategy=strategy, reflink=reflink),
                    template=template,
                    fingerprint=fingerprint,
                    size=size,
                    run_id=self.run_id,
                    worker_id=self.worker_id,
                    stats=self.stats,
                )
                self._pools[template] = pool
            return pool

    def _host(
        self, settings: Settings, template: str, backend: Backend, *, clone: bool
    ) -> tuple[str, Backend]:
        """This worker's own branch of the template, created once and dropped at close.

        For ``clone`` it returns the database to copy and a PostgreSQL backend on the host
        branch's server; nobody else connects to that database, so copying it never meets
        SQLSTATE 55006.
        """
        key = f"{template}:{'clone' if clone else 'rollback'}"
        with self._mutex:
            if key in self._hosts:
                return self._hosts[key]
            name = names.branch_name(self.run_id, self.worker_id, "host", key)
            tag = Tag(kind="branch", run=self.run_id, parent=template)
            with self.stats.timed("fork_seconds"):
                backend.fork(name, template, tag)
            self.stats.increment("branches_created")
            if clone:
                inner = PostgresBackend(backend.address(name), strategy=settings.strategy)
                row = inner.current_database()
                host: tuple[str, Backend] = (row, inner)
            else:
                host = (name, backend)
            self._hosts[key] = host
            self._host_branches.append((name, backend, host[1] if clone else None))
            return host

    def release(self, branch: Branch) -> bool:
        """Close the branch's clients, then drop it unless the keep policy says otherwise.

        Returns True when the branch was kept.
        """
        branch.close()
        if isinstance(branch, RollbackBranch):
            if branch.shared is not None:
                self._shared_connections[branch.name] = branch.shared
            return False  # the transaction was rolled back; the host branch lives on
        backend = branch.backend
        keep = branch.settings.keep
        if keep == "always" or (keep == "failed" and branch.failed):
            record = backend.describe(branch.name)
            if record is not None:
                from dataclasses import replace

                backend.retag(branch.name, replace(record.tag, kept=True))
            self.stats.branches_kept += 1
            self.kept.append(branch)
            return True
        if branch.pool is not None:
            try:
                branch.pool.give_back(branch.name)  # dropped in the background
                return False
            except RuntimeError:
                pass
        with self.stats.timed("drop_seconds"):
            backend.drop(branch.name)
        self.stats.increment("branches_dropped")
        return False

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

    def upgrade_branch(self, branch: Branch, revision: str) -> None:
        ini = branch.settings.alembic_ini_path()
        if ini is None:
            raise ConfigError("upgrade() needs an alembic.ini (dbbranch_alembic_ini)")
        project = migrate.load_project(ini, branch.settings.origin("alembic_ini"))
        project.resolve(revision, "upgrade()")
        backend = self.backend(branch.settings)
        with self.stats.timed("migrate_seconds"):
            migrate.upgrade(project, backend.address(branch.name), revision)

    # -- schema -----------------------------------------------------------------------------

    def schema_diff(self, settings: Settings | None = None) -> Any:
        """How the migrated template differs from the source (production), for reviewers."""
        from ..schema import diff_schemas

        settings = settings or self.settings
        template = self.template(settings)
        backend = self.backend(settings)
        plan = self._plans[template]
        source = backend.source_parent(plan.source, self.run_id)
        old = self.read_schema(source, settings, label="diff-source")
        new = self.read_schema(template, settings, label="diff-template")
        return diff_schemas(old, new)

    def read_schema(self, parent: str, settings: Settings | None = None, *, label: str = "schema") -> Any:
        """The schema of ``parent``, read on a throwaway branch of it: sealed templates accept
        no connections, and a source is never connected to for longer than a fork."""
        from ..schema import read_schema

        settings = settings or self.settings
        backend = self.backend(settings)
        name = names.branch_name(self.run_id, self.worker_id, "session", f"{label}:{parent}")
        backend.fork(name, parent, Tag(kind="branch", run=self.run_id, parent=parent))
        try:
            with psycopg.connect(backend.address(name).conninfo()) as conn:
                return read_schema(conn)
        finally:
            backend.drop(name)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close admin connections and let the embedded server stop if nobody else uses it."""
        with self._mutex:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
            for conn in self._shared_connections.values():
                with contextlib.suppress(Exception):
                    conn.close()
            self._shared_connections.clear()
            for name, backend, inner in reversed(self._host_branches):
                with contextlib.suppress(Exception):
                    if inner is not None:
                        inner.close()
                    with self.stats.timed("drop_seconds"):
                        backend.drop(name)
                    self.stats.increment("branches_dropped")
            self._host_branches.clear()
            self._hosts.clear()
            for backend in self._backends.values():
                with contextlib.suppress(Exception):
                    backend.close()
            self._backends.clear()
            if self._embedded is not None:
                self._embedded.release(self._registration)
                self._embedded = None
