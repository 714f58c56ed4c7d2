"""Migrated templates: what one is made of, and building it once.

A template is the source brought to the target revision, sealed, and named by a fingerprint
of everything that shapes it. Every branch of a test is a copy of one.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import names
from ..backends import Backend, BranchRecord, Tag
from ..errors import ConfigError
from ..migrations import NO_MIGRATIONS, load_migrator
from ..migrations.base import Migrator
from ..progress import Progress
from ..settings import Settings
from .fingerprint import MigrationsSummary, cached_summary, fingerprint, remember_summary, template_group
from .sealing import ensure_sealed
from .sources import Source, parse_source, resolve_parent
from .stats import Stats


class TemplatePlan:
    """Everything needed to build or find one template, computed without touching it.

    The migrations are loaded only when a template must be built, or when their files
    changed since the last run: their summary is remembered (``fingerprint.cached_summary``),
    and loading them (importing Alembic) costs more than the rest of a rerun.
    """

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.source: Source = parse_source(settings)
        self.target = settings.revision
        self._migrator: Migrator | None = None
        self._loaded = False
        summary = cached_summary(settings)
        if summary is None:
            summary = self._summarize()
        files = [(f"extra/{path.relative_to(settings.root)}", path) for path in settings.fingerprint_paths()]
        files += summary.file_pairs()
        self.fingerprint = fingerprint(
            source_identity=self.source.identity + backend.source_point,
            revisions=summary.revisions,
            server_version=backend.server_version,
            role=backend.role,
            files=files,
            ini_values=summary.ini_values,
        )
        self.group = template_group(
            ",".join(summary.lineage) if summary.present else "-",
            self.source.kind + ":" + self.source.label,
            self.target,
            backend.role,
        )
        self.name = names.template_name(self.group, self.fingerprint)

    @property
    def migrator(self) -> Migrator | None:
        """The migrations, loaded on first use (a found template never needs them)."""
        if not self._loaded:
            self._migrator = load_migrator(self.settings)
            self._loaded = True
        return self._migrator

    def _summarize(self) -> MigrationsSummary:
        settings = self.settings
        migrator = self.migrator
        if migrator is None:
            if settings.revision != "head":
                raise ConfigError(
                    NO_MIGRATIONS.format(where=settings.origin("revision"), revision=settings.revision)
                )
            # Not remembered: finding no migrations imports nothing.
            return MigrationsSummary(files=(), ini_values=(), lineage=(), revisions=(), present=False)
        summary = MigrationsSummary(
            files=tuple((relative, str(path)) for relative, path in migrator.files()),
            ini_values=tuple(migrator.settings_text()),
            lineage=tuple(migrator.lineage()),
            revisions=tuple(migrator.resolve(self.target, settings.origin("revision"))),
        )
        watched = _watched(migrator)
        if watched is not None:
            remember_summary(settings, summary, config_files=watched[0], roots=watched[1])
        return summary


def _watched(migrator: Migrator) -> tuple[list[Path], list[Path]] | None:
    """The configuration files and folders a migrator's summary depends on, besides its
    files; None when it may depend on more (an env.py that picks its version folders at run
    time, from the environment or application settings)."""
    # Both modules are loaded already: the migrator came from one of them.
    from ..migrations.alembic import _PICKS_FOLDERS, AlembicMigrator
    from ..migrations.sql_folder import SqlFolderMigrator

    if isinstance(migrator, SqlFolderMigrator):
        return [], [migrator.folder]
    if not isinstance(migrator, AlembicMigrator):
        return None
    env_text = (migrator.script_dir / "env.py").read_text(errors="replace")
    if _PICKS_FOLDERS.search(env_text):
        return None
    return [migrator.ini_path], [migrator.script_dir, *migrator.version_folders]


def ensure_template(
    plan: TemplatePlan, backend: Backend, *, run_id: str, stats: Stats, progress: Progress | None = None
) -> None:
    """Find the sealed template of ``plan`` or build it: fork the source, migrate, seal."""
    progress = progress or Progress()
    started = time.perf_counter()

    def reusable(record: BranchRecord) -> bool:
        # --dbbranch-rebuild rebuilds once per run: what this run sealed is fresh.
        return record.ready and (not plan.settings.rebuild or record.tag.run == run_id)

    def build() -> None:
        if plan.migrator is not None:
            with stats.timed("migrate_seconds"):
                plan.migrator.upgrade(backend.address(plan.name), plan.target, progress=progress)

    built = ensure_sealed(
        backend,
        plan.name,
        tag=Tag(kind="template", run=run_id, parent="", fingerprint=plan.fingerprint, group=plan.group),
        parent=lambda: resolve_parent(plan.source, backend, run_id=run_id, stats=stats, progress=progress),
        build=build,
        run_id=run_id,
        reusable=reusable,
        progress=progress,
    )
    if built:
        progress.note(f"template {plan.name} ready, built in {time.perf_counter() - started:.1f} s")
        stats.template_builds += 1
    else:
        stats.template_hits += 1
    if backend.kind == "postgres":
        # For the summary's word on slow copies (``Stats.copy_hint``).
        stats.postgres_templates += 1
        stats.cloned_templates += int(getattr(backend, "file_copy_method", None) == "clone")
