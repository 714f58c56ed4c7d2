"""Migrated templates: what one is made of, and building it once.

A template is the source brought to the target revision, sealed, and named by a fingerprint
of everything that shapes it. Every branch of a test is a copy of one.
"""

from __future__ import annotations

import time

from .. import names
from ..backends import Backend, BranchRecord, Tag
from ..errors import ConfigError
from ..migrations import NO_MIGRATIONS, load_migrator
from ..migrations.base import Migrator
from ..progress import Progress
from ..settings import Settings
from .fingerprint import fingerprint, template_group
from .sealing import ensure_sealed
from .sources import Source, parse_source, resolve_parent
from .stats import Stats


class TemplatePlan:
    """Everything needed to build or find one template, computed without touching it."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.source: Source = parse_source(settings)
        self.migrator: Migrator | None = load_migrator(settings)
        if self.migrator is None and settings.revision != "head":
            raise ConfigError(
                NO_MIGRATIONS.format(where=settings.origin("revision"), revision=settings.revision)
            )
        self.target = settings.revision
        revisions = self.migrator.resolve(self.target, settings.origin("revision")) if self.migrator else ()
        files = [(f"extra/{path.relative_to(settings.root)}", path) for path in settings.fingerprint_paths()]
        if self.migrator is not None:
            files += self.migrator.files()
        self.fingerprint = fingerprint(
            source_identity=self.source.identity + backend.source_point,
            revisions=revisions,
            server_version=backend.server_version,
            role=backend.role,
            files=files,
            ini_values=self.migrator.settings_text() if self.migrator else (),
        )
        self.group = template_group(
            ",".join(self.migrator.lineage()) if self.migrator else "-",
            self.source.kind + ":" + self.source.label,
            self.target,
            backend.role,
        )
        self.name = names.template_name(self.group, self.fingerprint)


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
