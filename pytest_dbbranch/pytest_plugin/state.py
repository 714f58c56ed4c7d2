"""What the plugin keeps for one pytest process: the resolved settings, the run id shared
with xdist workers, counters, and the branch manager (made on first use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from ..branching.stats import Stats
from ..errors import (
    ConfigError,
    DbBranchError,
    EmbeddedServerError,
    MigrationError,
    ServerLostError,
    SourceError,
)
from ..settings import Settings

if TYPE_CHECKING:
    from ..branching.manager import BranchManager

LIBPQ_MISSING = (
    "pytest-dbbranch cannot load psycopg ({error}). psycopg needs libpq: install "
    "'pytest-dbbranch[binary]' (psycopg with its own libpq) or the PostgreSQL client "
    "library of your system (libpq5, postgresql-libs)"
)


@dataclass
class RunState:
    #: From options, environment and ini files (``pytest_configure``).
    settings: Settings
    run_id: str
    worker_id: str | None
    stats: Stats = field(default_factory=Stats)
    #: The ``dbbranch_settings`` fixture's value once a test has asked for it: a conftest may
    #: override that fixture, and then everything (manager, checks, diff) uses its answer.
    fixture_settings: Settings | None = None
    manager: BranchManager | None = None
    #: Function-scope branches the collected tests ask for (this worker's upper bound).
    function_branches: int | None = None
    #: "name url" of branches kept by xdist workers, reported by the controller.
    kept_lines: list[str] = field(default_factory=list)
    #: A worker could not write the schema diff: the run fails.
    diff_failed: bool = False
    #: Things the user should know about how the run went (the embedded server's folder).
    notes: list[str] = field(default_factory=list)
    #: What stopped the run (message, exit code): a configuration error found before the
    #: tests, or a failure no later test could escape (the template does not build).
    fatal: tuple[str, int] | None = None

    def stop(self, session: pytest.Session, message: str, exit_code: int) -> None:
        """Stop the run after the current test: one clear error instead of the same one for
        every remaining test. xdist workers pass the stop on to the controller."""
        if self.fatal is None:
            self.fatal = (message, exit_code)
        first_line = message.splitlines()[0] if message else "stopped"
        session.shouldstop = f"pytest-dbbranch: {first_line}"

    @property
    def effective_settings(self) -> Settings:
        return self.fixture_settings or self.settings

    def use_settings(self, settings: Settings) -> None:
        self.fixture_settings = settings
        if self.manager is not None:
            self.manager.settings = settings

    def get_manager(self) -> BranchManager:
        if self.manager is None:
            try:
                from ..branching.manager import BranchManager
            except ImportError as exc:
                raise ConfigError(LIBPQ_MISSING.format(error=exc)) from None
            self.manager = BranchManager(
                self.effective_settings,
                run_id=self.run_id,
                worker_id=self.worker_id,
                stats=self.stats,
                background_drops=True,
            )
            self.manager.expect(self.function_branches)
        return self.manager

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None


STATE = pytest.StashKey[RunState]()


def fatal_exit_code(exc: DbBranchError) -> int | None:
    """Errors of the run's own configuration stop the run (usage error: exit 4), as does a
    template that does not build (exit 1); others fail their test only. A lost server fails
    the remaining tests at once by itself (``ServerLostError``), which lets tests that need
    no database still run."""
    if isinstance(exc, ConfigError | SourceError | EmbeddedServerError):
        return int(pytest.ExitCode.USAGE_ERROR)
    if isinstance(exc, MigrationError) and not isinstance(exc, ServerLostError):
        return int(pytest.ExitCode.TESTS_FAILED)
    return None
