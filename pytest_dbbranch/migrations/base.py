"""What the plugin needs from a migration tool, so Alembic is one adapter among others.

A template is a migrated copy named by a fingerprint of what shapes its schema: a migrator
says what that is (files and settings), migrates a branch to a target, and lists its
revisions so the review checks can walk them. Only some tools can go back down: checks that
need a downgrade ask ``can_downgrade`` and say when they do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..conninfo import ServerAddress
from ..progress import Progress


@dataclass(frozen=True)
class Revision:
    """One step of a migration history."""

    id: str
    #: The file that defines it (None for a callable's single step).
    path: Path | None
    title: str = ""
    #: The revisions it follows (several at an Alembic merge point, none at the start).
    down: tuple[str, ...] = ()
    #: Whether it can be undone (False also where the tool has no downgrades at all).
    has_downgrade: bool = False

    @property
    def label(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"revision {self.id}{where}"


class Migrator(Protocol):
    @property
    def kind(self) -> str:
        """ "alembic", "sql", "callable": for messages."""

    @property
    def description(self) -> str:
        """Where the migrations are, for messages ("the Alembic configuration ...")."""

    @property
    def can_downgrade(self) -> bool:
        """Whether any revision can be undone (``downgrade``)."""

    def files(self) -> list[tuple[str, Path]]:
        """(name relative to the project, path) of every file that shapes the schema."""

    def settings_text(self) -> list[tuple[str, str]]:
        """Configuration values that shape the schema, as written."""

    def lineage(self) -> tuple[str, ...]:
        """What tells this history from another project's, wherever it is checked out."""

    def resolve(self, target: str, where: str) -> tuple[str, ...]:
        """The revisions ``target`` stands for ("head" included); a ``MigrationError`` naming
        ``where`` for an unknown one."""

    def heads(self) -> list[str]:
        """The newest revisions (one for a linear history)."""

    def revisions(self) -> list[Revision]:
        """Every revision, oldest first."""

    def applied(self, address: ServerAddress) -> tuple[str, ...]:
        """The revisions the database at ``address`` records as applied."""

    def pending(self, applied: tuple[str, ...], target: str) -> list[Revision]:
        """What an upgrade from ``applied`` to ``target`` applies, in order."""

    def upgrade(self, address: ServerAddress, target: str, *, progress: Progress | None = None) -> None:
        """Migrate the database at ``address`` to ``target``, checked to have landed there."""

    def downgrade(self, address: ServerAddress, target: str) -> None:
        """Take it back to ``target`` (only where ``can_downgrade``)."""
