"""Errors the plugin raises on purpose.

Each one is meant to be read by a person in a CI log, so the message names the setting,
file or revision to fix. The plugin turns them into a short failure instead of a traceback
through psycopg and Alembic internals.
"""

from __future__ import annotations


class DbBranchError(Exception):
    """Base class: a problem the user can fix by changing configuration or files."""


class ConfigError(DbBranchError):
    """A setting has a value the plugin cannot use."""


class ServerError(DbBranchError):
    """The database server cannot be reached or refuses us."""


class ServerLostError(ServerError):
    """The server stopped answering during the run; later requests fail at once with this."""


class SourceError(DbBranchError):
    """The production snapshot (the source) is missing or cannot be restored."""


class MigrationError(DbBranchError):
    """Alembic could not bring a branch to the target revision."""

    #: The migration file and line at fault, where known: reports point at it.
    location: tuple[str, int] | None = None


class EmbeddedServerError(DbBranchError):
    """The plugin could not start its own PostgreSQL server."""


class NotOursError(DbBranchError):
    """Refusal to touch a database that this tool did not create."""


class ParentMissingError(DbBranchError):
    """The parent of a fork does not exist: a template another run dropped, for example."""


class BranchExistsError(DbBranchError):
    """Another process created this branch first; for a template, that is the lock."""


class CheckFailed(DbBranchError):
    """A migration check found a problem in the user's migrations or models."""

    #: The migration file and line at fault, where known: reports point at it.
    location: tuple[str, int] | None = None


class CheckNotApplicable(DbBranchError):
    """A check that cannot say anything here (no downgrades, no revision to walk, another
    check already failed for the same cause): reported as skipped, with the reason."""


class LakebaseOperationError(DbBranchError):
    """A Lakebase long-running operation ended with an error code."""

    def __init__(self, code: str, message: str, what: str) -> None:
        super().__init__(f"Lakebase {what} failed: [{code}] {message}")
        self.code = code
