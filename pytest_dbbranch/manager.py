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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from . import migrate, names
from .backend import Backend, BranchRecord, Tag, iter_stale_templates
from .branch import Branch
from .conninfo import ServerAddress
from .embedded import EmbeddedServer
from .errors import ConfigError, DbBranchError
from .fingerprint import fingerprint, project_key
from .postgres import PostgresBackend
from .settings import Settings
from .source import EMPTY_PARENT, Source, ensure_source, parse_source
from .stats import Stats


class _TemplatePlan:
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
        self.fingerprint = fingerprint(
            source_identity=self.source.identity,
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
    ) -> None:
        self.settings = settings
        self.run_id = run_id or names.new_run_id()
        self.worker_id = worker_id
        self.stats = stats or Stats()
        self._mutex = threading.RLock()
        self._backends: dict[str | None, Backend] = {}
        self._backend_failures: dict[str | None, DbBranchError] = {}
        self._embedded: EmbeddedServer | None = None
        self._templates: dict[tuple[Any, ...], str] = {}
        self._failures: dict[tuple[Any, ...], DbBranchError] = {}
        self._plans: dict[str, _TemplatePlan] = {}
        self.kept: list[Branch] = []

    # -- backends ---------------------------------------------------------------------------

    def backend(self, settings: Settings | None = None) -> Backend:
        settings = settings or self.settings
        with self._mutex:
            backend = self._backends.get(settings.url)
            if backend is None:
                # A server that refused us once is not retried by every test of the run.
                if settings.url in self._backend_failures:
                    raise self._backend_failures[settings.url]
                try:
                    address = self._address(settings)
                    backend = PostgresBackend(address, strategy=settings.strategy)
                except DbBranchError as exc:
                    self._backend_failures[settings.url] = exc
                    raise
                self._backends[settings.url] = backend
            return backend

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

    def lock_dir(self, settings: Settings) -> Path:
        if not settings.url and self._embedded is not None:
            folder = self._embedded.home / "locks"
        else:
            where = names.short_hash(self.backend(settings).server_key, 10)
            folder = Path(tempfile.gettempdir()) / f"pytest-dbbranch-{os.getuid()}" / "locks" / where
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
        plan = _TemplatePlan(settings, backend)
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
            if record is not None:
                backend.drop(plan.name)  # half-built by a crash, or --dbbranch-rebuild
            elif backend.exists(plan.name):
                raise DbBranchError(
                    f"database {plan.name!r} exists but was not created by pytest-dbbranch; "
                    "rename or drop it yourself"
                )
            self._build(plan, backend)
        self._drop_stale(plan, backend)
        return plan.name

    def _reusable(self, record: BranchRecord | None, settings: Settings) -> bool:
        """Sealed, and not due for a rebuild (``--dbbranch-rebuild`` rebuilds once per run)."""
        if record is None or not record.ready:
            return False
        return not settings.rebuild or record.tag.run == self.run_id

    def _build(self, plan: _TemplatePlan, backend: Backend) -> None:
        restoring = (
            plan.source.kind == "dump"
            and backend.describe(names.source_name(plan.source.identity.removeprefix("dump:"))) is None
        )
        parent = ensure_source(plan.source, backend, self.run_id)
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

    def _drop_stale(self, plan: _TemplatePlan, backend: Backend) -> None:
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
        """Fork a new branch of the migrated template."""
        settings = settings or self.settings
        template = self.template(settings)
        backend = self.backend(settings)
        name = names.branch_name(self.run_id, self.worker_id, scope, node_id, salt)
        tag = Tag(
            kind="branch",
            run=self.run_id,
            parent=template,
            fingerprint=self._plans[template].fingerprint if template in self._plans else "",
        )
        with self.stats.timed("fork_seconds"):
            backend.fork(name, template, tag)
        self.stats.branches_created += 1
        return Branch(name, backend, settings, self, settings.revision)

    def release(self, branch: Branch) -> bool:
        """Close the branch's clients, then drop it unless the keep policy says otherwise.

        Returns True when the branch was kept.
        """
        branch.close()
        backend = self.backend(branch.settings)
        keep = branch.settings.keep
        if keep == "always" or (keep == "failed" and branch.failed):
            record = backend.describe(branch.name)
            if record is not None:
                from dataclasses import replace

                backend.retag(branch.name, replace(record.tag, kept=True))
            self.stats.branches_kept += 1
            self.kept.append(branch)
            return True
        with self.stats.timed("drop_seconds"):
            backend.drop(branch.name)
        self.stats.branches_dropped += 1
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

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close admin connections and let the embedded server stop if nobody else uses it."""
        with self._mutex:
            for backend in self._backends.values():
                with contextlib.suppress(Exception):
                    backend.close()
            self._backends.clear()
            if self._embedded is not None:
                self._embedded.release(self._registration)
                self._embedded = None


__all__ = ["EMPTY_PARENT", "BranchManager"]
