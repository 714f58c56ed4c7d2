"""Migration checks on production-shaped data, each on its own branch of the source.

They are what a reviewer wants to know before a migration reaches production: is the history
linear, does the upgrade survive real data, does each revision give the same result when it
is applied again, can each be rolled back, and do the models describe what the migrations
build. Each check can fail, reports every problem of the chain at once, and says what to fix;
a check that cannot say anything here (no downgrades, nothing to walk, the upgrade itself
broken) says so and is skipped rather than passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..branching.manager import BranchManager
from ..branching.sources import resolve_parent
from ..branching.templates import TemplatePlan
from ..errors import CheckFailed, CheckNotApplicable, ConfigError, MigrationError
from ..migrations import load_migrator
from ..migrations.base import Migrator, Revision
from ..settings import Settings
from .walk import Walk, can_step_down, describe, differences, problem

CHECKS = ("single-head", "applies", "idempotent", "reversible", "models-match")


class MigrationChecks:
    """The checks for one configuration; usable from a script as well as from pytest."""

    def __init__(self, manager: BranchManager, settings: Settings | None = None) -> None:
        self.manager = manager
        self.settings = settings or manager.settings
        self._migrator: Migrator | None = None
        #: What a passing check could not cover (revisions without a downgrade, merge points).
        self.notes: list[str] = []

    @property
    def migrator(self) -> Migrator:
        if self._migrator is None:
            self._migrator = load_migrator(self.settings)
            if self._migrator is None:
                raise ConfigError(
                    "the migration checks need migrations: an alembic.ini (dbbranch_alembic_ini) "
                    "or dbbranch_migrations"
                )
        return self._migrator

    def run(self, check: str) -> None:
        runner: Callable[[], None] = getattr(self, check.replace("-", "_"))
        runner()

    # -- the checks -------------------------------------------------------------------------

    def single_head(self) -> None:
        migrator = self.migrator
        if migrator.kind == "callable":
            raise CheckNotApplicable(f"{migrator.description} has no history to count heads in")
        heads = migrator.heads()
        if not heads:
            raise CheckFailed(
                f"{migrator.description} has no revision at all; if env.py chooses its version "
                "folders at run time, name them in version_locations instead" + _discovery_note(migrator)
            )
        if len(heads) > 1:
            raise CheckFailed(
                f"{migrator.description} has {len(heads)} heads ({', '.join(heads)}); merge them "
                "(`alembic merge heads`) so that every environment applies the same history"
            )

    def applies(self) -> None:
        self.migrator  # noqa: B018 - the checks need migrations, say so first
        try:
            self.manager.plan(self.settings)
        except MigrationError as exc:
            failure = CheckFailed(
                f"the upgrade to {self.settings.revision!r} fails on production-shaped data:\n{exc}"
            )
            failure.location = exc.location
            raise failure from None

    def reversible(self) -> None:
        self._downgrading("reversible")
        plan = self._upgradable()
        problems: list[tuple[str, tuple[str, int] | None]] = []
        with self._walk(plan, "reversible") as walk:
            revisions = self._revisions_to_walk(walk, plan)
            states = [walk.state()]
            for revision in revisions:
                walk.up(revision)
                states.append(walk.state())
            in_place = True  # the branch is at the state after the revision being undone
            for k in range(len(revisions), 0, -1):
                revision, before, after = revisions[k - 1], states[k - 1], states[k]
                if not in_place:
                    walk.restart_at(after.applied)
                    in_place = True
                if not revision.has_downgrade:
                    in_place = False
                    if self.settings.downgrades_optional:
                        self.notes.append(
                            f"{describe(revision)} has no downgrade (dbbranch_downgrades_optional)"
                        )
                    else:
                        problems.append((problem(revision, "has no downgrade", []), _downgrade_at(revision)))
                    continue
                if not can_step_down(before, revision):
                    in_place = False
                    self.notes.append(f"{describe(revision)}: not checked (a merge point of the history)")
                    continue
                try:
                    walk.down_to(before.applied)
                except MigrationError as exc:
                    in_place = False
                    problems.append((problem(revision, "its downgrade fails:", str(exc)), exc.location))
                    continue
                lost = differences(before, walk.state(), ("before it", "after its downgrade"))
                if lost:
                    in_place = False
                    headline = "its downgrade does not give back what was there before it:"
                    problems.append((problem(revision, headline, lost), _downgrade_at(revision)))
        if problems:
            problems.reverse()  # found newest first; reported in the order of the history
            self.notes.reverse()
            _fail(
                f"{len(problems)} of {len(revisions)} revisions cannot be rolled back cleanly "
                "(schema compared object by object; rows by count and values):",
                problems,
                self.notes,
                "give each revision a downgrade() that undoes exactly its upgrade(), or set "
                "dbbranch_downgrades_optional if the team only fixes forward",
            )

    def idempotent(self) -> None:
        self._downgrading("idempotent")
        plan = self._upgradable()
        problems: list[tuple[str, tuple[str, int] | None]] = []
        checked = 0
        blockers: list[Revision] = []
        with self._walk(plan, "idempotent") as walk:
            revisions = self._revisions_to_walk(walk, plan)
            previous = walk.state()
            for revision in revisions:
                walk.up(revision)
                once = walk.state()
                before, previous = previous, once
                if not revision.has_downgrade or not can_step_down(before, revision):
                    blockers.append(revision)
                    continue
                try:
                    walk.down_to(before.applied)
                except MigrationError as exc:
                    problems.append(
                        (
                            problem(revision, "cannot be applied twice: its downgrade fails:", str(exc)),
                            exc.location,
                        )
                    )
                    walk.restart_at(once.applied)
                    continue
                try:
                    walk.up(revision)
                except MigrationError as exc:
                    headline = "applying it again after its downgrade fails:"
                    problems.append((problem(revision, headline, str(exc)), exc.location))
                    walk.restart_at(once.applied)
                    continue
                checked += 1
                changed = differences(once, walk.state(), ("applied once", "applied twice"))
                if changed:
                    headline = "applied, undone and applied again, it leaves another state than applied once:"
                    problems.append((problem(revision, headline, changed), _upgrade_at(revision)))
                    walk.restart_at(once.applied)
        self.notes.extend(f"{describe(r)}: not checked (it cannot be undone in between)" for r in blockers)
        if problems:
            _fail(
                f"{len(problems)} of {len(revisions)} revisions do not give the same result when "
                "applied again:",
                problems,
                self.notes,
                "make data migrations depend only on the schema they run on (no appending, no "
                "converting twice), and downgrades undo them",
            )
        if not checked:
            raise CheckNotApplicable(
                f"no revision could be applied twice: {describe(blockers[0])} blocks the check "
                "(no downgrade to undo it in between)"
            )

    def models_match(self) -> None:
        from .models import compare_models

        plan = self._upgradable()
        compare_models(self.manager, self.settings, plan)

    # -- helpers ----------------------------------------------------------------------------

    def _downgrading(self, check: str) -> Migrator:
        migrator = self.migrator
        if not migrator.can_downgrade:
            raise CheckNotApplicable(
                f"the {check} check undoes revisions, and {migrator.description} has no downgrades"
            )
        return migrator

    def _upgradable(self) -> TemplatePlan:
        """The built template's plan; a broken upgrade is the ``applies`` check's to report,
        so the other checks are skipped with a pointer to it rather than failing again."""
        try:
            return self.manager.plan(self.settings)
        except MigrationError as exc:
            first = str(exc).splitlines()[0].rstrip(".")
            raise CheckNotApplicable(f"the upgrade itself fails ({first}); see the 'applies' check") from None

    def _walk(self, plan: TemplatePlan, label: str) -> Walk:
        backend = self.manager.backend(self.settings)
        parent = resolve_parent(plan.source, backend, run_id=self.manager.run_id, stats=self.manager.stats)
        return Walk(
            self.manager, self.settings, parent, self.migrator, f"check-{label}", self.settings.check_data
        )

    def _revisions_to_walk(self, walk: Walk, plan: TemplatePlan) -> list[Revision]:
        revisions = walk.pending(plan.target)
        if not revisions:
            raise CheckNotApplicable(
                f"no revision newer than the source's to walk (the source is already at {plan.target!r})"
            )
        return revisions


def _fail(
    headline: str, problems: list[tuple[str, tuple[str, int] | None]], notes: list[str], advice: str
) -> None:
    text = [headline, ""] + [text for text, _ in problems]
    if notes:
        text += ["", "not checked:"] + [f"  {note}" for note in notes]
    text += ["", f"-> {advice}"]
    failure = CheckFailed("\n".join(text))
    failure.location = next((where for _, where in problems if where is not None), None)
    raise failure


def _discovery_note(migrator: Migrator) -> str:
    error = getattr(migrator, "discovery_error", None)
    return f" (running env.py offline to learn its folders failed: {error})" if error else ""


def _downgrade_at(revision: Revision) -> tuple[str, int] | None:
    if revision.path is None:
        return None
    if revision.path.suffix == ".py":
        from ..migrations.alembic import downgrade_line

        return (str(revision.path), downgrade_line(revision.path))
    return (str(revision.path), 1)


def _upgrade_at(revision: Revision) -> tuple[str, int] | None:
    if revision.path is None:
        return None
    for number, line in enumerate(_lines(revision.path), start=1):
        if line.lstrip().startswith("def upgrade"):
            return (str(revision.path), number)
    return (str(revision.path), 1)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
