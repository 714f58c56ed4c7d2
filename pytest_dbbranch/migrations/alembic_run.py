"""Running Alembic in process on one branch, whatever shape the project's env.py has.

Alembic runs in-process (0.18 s for 30 revisions, against 0.74 s as a CLI; see the README's
Performance section). What env.py may do, and how each is met:

- use the connection handed over in ``config.attributes["connection"]`` (Alembic's recipe);
- call ``.connect()`` on it, expecting an Engine (pytest-alembic's convention): the run is
  retried with an Engine before any revision ran;
- build its own engine from ``sqlalchemy.url`` (also the async template's
  ``async_engine_from_config``): the URL points at the branch, with the project's driver;
- read ``DATABASE_URL`` (or the variables of ``dbbranch_url_env``): set to the branch's URL;
- call ``fileConfig``, which disables every logger the application created: the logging
  state is put back afterwards, so a test's logging never depends on whether a template was
  built in its run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ..conninfo import ServerAddress, describe_connect_error
from ..errors import ConfigError, DbBranchError, MigrationError, ServerError
from ..progress import Progress


class AlembicMigrator(Protocol):
    """What running Alembic needs of the adapter (``alembic.AlembicMigrator``), named here so
    that this module does not import the one that imports it."""

    url_env: tuple[str, ...]
    script: Any

    @property
    def url_scheme(self) -> str: ...

    def new_config(self, url: str) -> Any: ...


#: SQLAlchemy dialect drivers that only work from an event loop.
_ASYNC_DRIVERS = ("+asyncpg", "+psycopg_async", "+aiopg", "+asyncmy")
_RUNNING = re.compile(r"Running (?:upgrade|downgrade) .*?-> ([^\s,]+),?\s*(.*)")


class _RevisionTracker(logging.Handler):
    """Follows Alembic's announcements: the last revision started (for errors) and one
    progress line per revision ("revision k of n")."""

    def __init__(self, progress: Progress, order: list[str], target: str) -> None:
        super().__init__(logging.DEBUG)
        self.current: str | None = None
        self.progress = progress
        self.order = order
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        match = _RUNNING.search(record.getMessage())
        if not match:
            return
        self.current = match.group(1)
        title = f"{self.current} {match.group(2)}".strip()
        position = (
            f" ({self.order.index(self.current) + 1} of {len(self.order)})"
            if self.current in self.order
            else ""
        )
        self.progress.begin(f"migrating to {self.target}: {title}{position}")


def run(
    migrator: AlembicMigrator,
    address: ServerAddress,
    target: str,
    direction: str,
    *,
    progress: Progress | None = None,
    order: list[str] | None = None,
) -> None:
    """``alembic upgrade|downgrade target`` on the database at ``address``."""
    progress = progress or Progress()
    tracker = _RevisionTracker(progress, order or [], target)
    logger = logging.getLogger("alembic.runtime.migration")
    with logging_kept(), _url_environment(migrator.url_env, address), _tracked(logger, tracker):
        try:
            _invoke(migrator, address, target, direction, tracker)
        except Exception as exc:
            raise migration_error(migrator, address, target, tracker.current, exc, direction) from None
        finally:
            progress.end()
            logger.removeHandler(tracker)  # and logging_kept puts the level back


def _invoke(
    migrator: AlembicMigrator, address: ServerAddress, target: str, direction: str, tracker: _RevisionTracker
) -> None:
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = address.url(scheme=migrator.url_scheme)
    if migrator.url_scheme.endswith(_ASYNC_DRIVERS):
        # An async env.py makes its own async engine from sqlalchemy.url (the branch's, with
        # the project's async driver); a sync connection handed over would go unused.
        getattr(command, direction)(migrator.new_config(url), target)
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = migrator.new_config(url)
            config.attributes["connection"] = connection
            try:
                getattr(command, direction)(config, target)
                return
            except AttributeError as exc:
                # env.py called .connect() on what it expected to be an Engine.
                if getattr(exc, "name", None) != "connect" or exc.obj is not connection or tracker.current:
                    raise
        config = migrator.new_config(url)
        config.attributes["connection"] = engine
        getattr(command, direction)(config, target)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _url_environment(variables: tuple[str, ...], address: ServerAddress) -> Iterator[None]:
    """Point the named environment variables at the branch while env.py runs, each with the
    scheme (driver) of its current value, and put them back afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in saved.items():
            scheme = value.split("://", 1)[0] if value and "://" in value else "postgresql"
            os.environ[name] = address.url(scheme=scheme)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _tracked(logger: logging.Logger, tracker: logging.Handler) -> Iterator[None]:
    """Keep ``tracker`` on Alembic's logger for the run, also after env.py's ``fileConfig``
    (the stock env.py calls it): that resets the handlers of every logger under the ones its
    ini configures, ours included, and the progress lines and the revision named in an error
    would go with it."""
    import logging.config

    original = logging.config.fileConfig

    def attach() -> None:
        if tracker not in logger.handlers:
            logger.addHandler(tracker)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def file_config(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        attach()

    attach()
    logging.config.fileConfig = file_config
    try:
        yield
    finally:
        logging.config.fileConfig = original


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Put the logging configuration back as it was: env.py's ``fileConfig`` disables the
    application's loggers and adds handlers that would print Alembic's lines in later tests."""
    root = logging.getLogger()
    manager = logging.Logger.manager
    before = {
        name: (logger.disabled, logger.level, list(logger.handlers), logger.propagate)
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root_state = (root.level, list(root.handlers), root.disabled)
    try:
        yield
    finally:
        for name, logger in list(manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            if name in before:
                logger.disabled, logger.level, handlers, logger.propagate = before[name]
                logger.handlers[:] = handlers
            else:
                logger.handlers.clear()
                logger.propagate = True
        root.level, handlers, root.disabled = root_state
        root.handlers[:] = handlers


def _no_connection(error: BaseException) -> bool:
    """A connection refused or lost (no slot left, server gone), not a statement that failed."""
    import psycopg

    sqlstate = getattr(error, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "53300", "57P")) or (
        isinstance(error, psycopg.OperationalError) and not sqlstate
    )


def migration_error(
    migrator: AlembicMigrator,
    address: ServerAddress,
    target: str,
    announced: str | None,
    exc: Exception,
    direction: str = "upgrade",
) -> DbBranchError:
    original = getattr(exc, "orig", None) or exc
    if "greenlet" in str(original).lower() and type(original).__name__ in ("ValueError", "MissingGreenlet"):
        return ConfigError(
            f"Alembic's async env.py needs greenlet to run SQLAlchemy's asyncio support ({original}); "
            "install 'pytest-dbbranch[async]' (or sqlalchemy[asyncio]): nothing is wrong with the migrations"
        )
    if _no_connection(original):
        return ServerError(
            f"Alembic could not connect to the branch it migrates ({direction[:-1]}ing to {target!r}); "
            "nothing is wrong with the migrations: "
            + describe_connect_error(address, address.dbname, original)
        )
    found, frame = _revision_from_traceback(migrator, exc)
    revision = found or announced
    where = f"revision {revision}" if revision else f"the upgrade to {target}"
    statement = getattr(exc, "statement", None)
    lines = [f"Alembic migration failed at {where} ({direction[:-1]}ing a branch to {target!r})."]
    if frame is not None:
        lines.append(f"  file: {frame.filename}, line {frame.lineno}: {(frame.line or '').strip()}")
    elif revision:
        script = migrator.script.get_revision(revision)
        if script is not None:
            lines.append(f"  file: {script.path}")
    if statement:
        lines.append(f"  statement: {' '.join(str(statement).split())[:500]}")
    lines.append(f"  error: {type(original).__name__}: {address.redact(str(original)).strip()}")
    if type(original).__name__ == "InsufficientPrivilege":
        lines.append(
            f"  -> not a fault of the migration: the role {address.user or '(default)'} lacks a privilege "
            "on an object the statement uses, which another role owns (the copy keeps the owners of "
            "the source it was made from). Use a source this role owns, or grant it the privilege."
        )
    else:
        lines.append("  -> fix that migration.")
    error = MigrationError("\n".join(lines))
    error.location = (frame.filename, frame.lineno or 1) if frame is not None else None
    if error.location is None and revision:
        script = migrator.script.get_revision(revision)
        error.location = (script.path, 1) if script is not None else None
    return error


def _revision_from_traceback(
    migrator: AlembicMigrator, exc: BaseException
) -> tuple[str | None, traceback.FrameSummary | None]:
    """The innermost frame inside a revision file names the revision that raised, and the
    line (for a Python error; a SQL error has its statement instead)."""
    by_path = {}
    for script in migrator.script.walk_revisions():
        by_path[str(Path(script.path).resolve())] = script.revision
    found: tuple[str | None, traceback.FrameSummary | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        revision = by_path.get(str(Path(frame.filename).resolve()))
        if revision:
            found = (revision, frame)
    return found
