"""Walking a migration history on one branch of the source, one revision at a time, and
reading the state (schema and rows) at each step, for the checks that undo and redo.

A step that fails or leaves a wrong state would poison every later comparison, so the walk
can start over on a fresh branch at any revision (``restart_at``) and go on checking the
rest: a check reports every problem of a chain, not only its first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from ..conninfo import ServerAddress
from ..migrations.base import Migrator, Revision
from .data_state import Mode, TableState, compare, read_state

if TYPE_CHECKING:
    from ..branching.manager import BranchManager
    from ..schema import Schema
    from ..settings import Settings

#: Bookkeeping tables of the migration tools: never part of the compared state.
HISTORY_TABLES = ("alembic_version", "flyway_schema_history")


@dataclass(frozen=True)
class State:
    schema: Schema
    rows: dict[str, TableState]
    #: The newest revisions the branch records as applied (its heads: one on a linear
    #: history), whatever the tool records (Alembic its heads, Flyway every version).
    applied: tuple[str, ...]


def differences(before: State, after: State, labels: tuple[str, str] = ("before", "after")) -> list[str]:
    """What differs, one readable line per object: the schema's changes with their
    definitions on each side, then the rows."""
    from ..schema import diff_schemas

    lines = []
    for change in diff_schemas(before.schema, after.schema, exclude=HISTORY_TABLES).changes:
        where = f" on {change.table}" if change.table and change.table != change.name else ""
        lines.append(
            f"{change.kind} {change.name}{where}: {labels[0]}: {change.before or 'absent'}; "
            f"{labels[1]}: {change.after or 'absent'}"
        )
    return lines + compare(before.rows, after.rows, labels)


class Walk:
    """One scratch branch of the source at a time, moved through the history."""

    def __init__(
        self,
        manager: BranchManager,
        settings: Settings,
        parent: str,
        migrator: Migrator,
        label: str,
        data: Mode,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.parent = parent
        self.migrator = migrator
        self.label = label
        self.data = data
        self._stack = contextlib.ExitStack()
        self._restarts = 0
        self._downs: dict[str, tuple[str, ...]] | None = None
        self.address: ServerAddress = self._fresh()

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _fresh(self) -> ServerAddress:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._restarts += 1
        label = f"{self.label}{self._restarts}"
        return self._stack.enter_context(self.manager.scratch(self.parent, label, self.settings))

    def restart_at(self, applied: tuple[str, ...]) -> None:
        """A new branch of the source brought to the revisions ``applied`` (the heads a
        state recorded), so that a failed or wrong step does not spoil the next ones."""
        self.address = self._fresh()
        for head in applied:
            self.migrator.upgrade(self.address, head)

    def state(self) -> State:
        from ..schema import read_schema

        with psycopg.connect(self.address.conninfo(), connect_timeout=10) as conn:
            return State(
                schema=read_schema(conn),
                rows=read_state(conn, self.data, HISTORY_TABLES),
                applied=self._heads(self.migrator.applied(self.address)),
            )

    def _heads(self, applied: tuple[str, ...]) -> tuple[str, ...]:
        if self._downs is None:
            self._downs = {revision.id: revision.down for revision in self.migrator.revisions()}
        followed = {down for revision in applied for down in self._downs.get(revision, ())}
        return tuple(revision for revision in applied if revision not in followed)

    def pending(self, target: str) -> list[Revision]:
        return self.migrator.pending(self.migrator.applied(self.address), target)

    def up(self, revision: Revision) -> None:
        self.migrator.upgrade(self.address, revision.id)

    def down_to(self, applied: tuple[str, ...]) -> None:
        """Back to the state whose heads were ``applied`` (one head, or none: the start)."""
        self.migrator.downgrade(self.address, applied[0] if applied else "base")


def can_step_down(before: State, revision: Revision) -> bool:
    """A revision is undone to a single earlier revision (or to nothing); a merge point or a
    branched state in between has no single target to go back to."""
    return len(revision.down) <= 1 and len(before.applied) <= 1


def describe(revision: Revision) -> str:
    title = f' "{revision.title}"' if revision.title else ""
    where = f" ({revision.path})" if revision.path else ""
    return f"revision {revision.id}{title}{where}"


def problem(revision: Revision, headline: str, details: list[str] | str) -> str:
    lines = details.splitlines() if isinstance(details, str) else details
    return "\n".join([f"{describe(revision)}: {headline}"] + [f"    {line}" for line in lines])


__all__ = ["HISTORY_TABLES", "State", "Walk", "can_step_down", "describe", "differences", "problem"]
