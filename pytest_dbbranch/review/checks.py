"""Migration checks on production-shaped data, each on its own branch of the source.

They are what a reviewer wants to know before a migration reaches production: is the history
linear, does the upgrade survive real data, is it safe to run twice, can it be rolled back,
and do the models describe what the migrations build. Failures say what to fix.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from ..branching.manager import BranchManager
from ..branching.sources import resolve_parent
from ..branching.templates import TemplatePlan
from ..conninfo import ServerAddress
from ..errors import CheckFailed, ConfigError, MigrationError
from ..migrations.alembic import AlembicMigrator, load_alembic
from ..migrations.versions import current_revisions, revisions_since
from ..settings import Settings

if TYPE_CHECKING:
    from ..schema import Schema

CHECKS = ("single-head", "applies", "idempotent", "reversible", "models-match")


class MigrationChecks:
    """The checks for one configuration; usable from a script as well as from pytest."""

    def __init__(self, manager: BranchManager, settings: Settings | None = None) -> None:
        self.manager = manager
        self.settings = settings or manager.settings
        self._plan: TemplatePlan | None = None

    @property
    def plan(self) -> TemplatePlan:
        if self._plan is None:
            self._plan = TemplatePlan(self.settings, self.manager.backend(self.settings))
            if self._plan.migrator is None:
                raise ConfigError("migration checks need an alembic.ini (dbbranch_alembic_ini)")
        return self._plan

    def run(self, check: str) -> None:
        runner: Callable[[], None] = getattr(self, check.replace("-", "_"))
        runner()

    # -- the checks -------------------------------------------------------------------------

    def single_head(self) -> None:
        # Straight from the script directory: the template plan refuses two heads itself,
        # with a message about the target rather than the history.
        ini = self.settings.alembic_ini_path()
        if ini is None:
            raise ConfigError("migration checks need an alembic.ini (dbbranch_alembic_ini)")
        migrator = load_alembic(ini, self.settings.origin("alembic_ini"))
        heads = sorted(migrator.script.get_heads())
        if len(heads) != 1:
            raise CheckFailed(
                f"the Alembic script directory {migrator.script_dir} has {len(heads)} heads "
                f"({', '.join(heads)}); merge them with `alembic merge heads`"
            )

    def applies(self) -> None:
        with self._source_branch("applies") as address:
            base = self._revisions(address)
            try:
                self._migrator.upgrade(address, self.plan.target)
            except MigrationError as exc:
                raise _located(
                    exc,
                    CheckFailed(
                        f"the upgrade from the source's revision ({_revs(base)}) to {self.plan.target} "
                        f"fails on production-shaped data:\n{exc}"
                    ),
                ) from None

    def idempotent(self) -> None:
        with self._source_branch("idempotent") as address:
            self._migrator.upgrade(address, self.plan.target)
            before, rows_before = self._schema(address), self._revisions(address)
            self._migrator.upgrade(address, self.plan.target)
            after, rows_after = self._schema(address), self._revisions(address)
        if rows_after != rows_before:
            raise CheckFailed(
                f"running the upgrade again changed the version table: {rows_before} -> {rows_after}"
            )
        if not _same(before, after):
            raise CheckFailed(
                "running the upgrade a second time changed the schema; make the migrations "
                f"idempotent:\n{_summary(before, after)}"
            )

    def reversible(self) -> None:
        migrator = self._migrator
        problems: list[str] = []
        with self._source_branch("reversible") as address:
            base = self._revisions(address)
            scripts = revisions_since(migrator.script, base, self.plan.target)
            missing = [script for script in scripts if not _has_downgrade(script)]
            if missing:
                failure = CheckFailed(
                    "\n".join(f"revision {s.revision} ({s.path}) has no downgrade" for s in missing)
                )
                failure.location = (missing[0].path, _downgrade_line(missing[0]))
                raise failure
            for script in scripts:
                down = script.down_revision
                if isinstance(down, tuple | list):
                    continue  # a merge point: its parents are checked on their own
                before = self._schema(address)
                migrator.upgrade(address, script.revision)
                applied = self._schema(address)
                try:
                    migrator.downgrade(address, down or "base")
                except MigrationError as exc:
                    raise _located(
                        exc,
                        CheckFailed(
                            f"revision {script.revision}: its downgrade fails on production-shaped "
                            f"data:\n{exc}"
                        ),
                    ) from None
                back = self._schema(address)
                if not _same(back, before):
                    problems.append(
                        f"revision {script.revision}: downgrade does not restore the schema before "
                        f"it:\n{_summary(before, back)}"
                    )
                    break
                migrator.upgrade(address, script.revision)
                again = self._schema(address)
                if not _same(again, applied):
                    problems.append(
                        f"revision {script.revision}: upgrade after downgrade gives another schema:\n"
                        f"{_summary(applied, again)}"
                    )
                    break
        if problems:
            raise CheckFailed("\n".join(problems))

    def models_match(self) -> None:
        metadata = load_metadata(self.settings)
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        with self._source_branch("models") as address:
            self._migrator.upgrade(address, self.plan.target)
            engine = create_engine(address.sqlalchemy_url(), poolclass=NullPool)
            try:
                with engine.connect() as conn:
                    context = MigrationContext.configure(
                        conn, opts={"compare_type": True, "compare_server_default": False}
                    )
                    differences = compare_metadata(context, metadata)
            finally:
                engine.dispose()
        differences = [d for d in differences if "alembic_version" not in repr(d)]
        if differences:
            lines = "\n".join(f"  - {_describe(d)}" for d in differences)
            raise CheckFailed(
                f"the models ({self.settings.models}) and the migrated schema differ; add a "
                f"migration (alembic revision --autogenerate) or fix the models:\n{lines}"
            )

    # -- helpers ----------------------------------------------------------------------------

    @property
    def _migrator(self) -> AlembicMigrator:
        migrator = self.plan.migrator
        assert migrator is not None
        return migrator

    @contextlib.contextmanager
    def _source_branch(self, label: str) -> Iterator[ServerAddress]:
        """A fresh branch of the source, dropped afterwards whatever happens."""
        manager = self.manager
        backend = manager.backend(self.settings)
        parent = resolve_parent(self.plan.source, backend, run_id=manager.run_id, stats=manager.stats)
        with manager.scratch(parent, f"check-{label}", self.settings) as address:
            yield address

    def _revisions(self, address: ServerAddress) -> tuple[str, ...]:
        with psycopg.connect(address.conninfo()) as conn:
            return current_revisions(conn)

    def _schema(self, address: ServerAddress) -> Schema:
        from ..schema import read_schema

        with psycopg.connect(address.conninfo()) as conn:
            return read_schema(conn)


def load_metadata(settings: Settings) -> Any:
    """Import ``package.module:attribute`` with the rootdir on the path, as pytest would."""
    spec = settings.models
    if not spec or ":" not in spec:
        raise ConfigError(f"dbbranch_models: expected 'package.module:metadata', got {spec!r}")
    module_name, attribute = spec.split(":", 1)
    root = str(settings.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"dbbranch_models: cannot import {module_name!r} ({exc})") from None
    value: Any = module
    for part in attribute.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise ConfigError(f"dbbranch_models: {module_name!r} has no {attribute!r}")
    # A declarative base is accepted too: its metadata is what Alembic compares.
    return getattr(value, "metadata", value) if not _is_metadata(value) else value


def _is_metadata(value: Any) -> bool:
    from sqlalchemy import MetaData

    return isinstance(value, MetaData)


def _has_downgrade(script: Any) -> bool:
    """A downgrade() that only passes (or is missing) cannot undo anything."""
    function = getattr(script.module, "downgrade", None)
    if function is None:
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return True
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    meaningful = [
        node
        for node in body
        if not isinstance(node, ast.Pass)
        and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]
    return bool(meaningful)


def _same(a: Any, b: Any) -> bool:
    """Same objects with the same definitions. Column order is not compared: PostgreSQL cannot
    move a column without rewriting the table, so a downgrade that re-adds one puts it last."""
    from ..schema import diff_schemas

    return bool(diff_schemas(a, b).empty)


def _summary(before: Any, after: Any) -> str:
    from ..schema import diff_schemas

    changes = diff_schemas(before, after).changes
    return (
        "\n".join(
            f"  - {c.action} {c.kind} {c.name}" + (f" on {c.table}" if c.table else "") for c in changes
        )
        or "  (differences outside the compared objects)"
    )


def _describe(difference: Any) -> str:
    if isinstance(difference, tuple) and difference:
        action = str(difference[0])
        rest = [getattr(x, "name", None) or str(x) for x in difference[1:] if x is not None]
        return f"{action}: {', '.join(map(str, rest))}"
    if isinstance(difference, list):
        return "; ".join(_describe(d) for d in difference)
    return str(difference)


def _revs(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) if revisions else "empty"


def _located(cause: MigrationError, failure: CheckFailed) -> CheckFailed:
    """The check's failure points at the migration file and line the migration error names."""
    failure.location = cause.location
    return failure


def _downgrade_line(script: Any) -> int:
    """The line of a revision's ``def downgrade`` (1 when it has none)."""
    try:
        text = Path(script.path).read_text().splitlines()
    except OSError:
        return 1
    for number, line in enumerate(text, start=1):
        if line.lstrip().startswith("def downgrade"):
            return number
    return 1
