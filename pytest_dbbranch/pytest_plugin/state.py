"""What the plugin keeps for one pytest process: the resolved settings, the run id shared
with xdist workers, counters, and the branch manager (made on first use)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ..branching.manager import BranchManager
from ..branching.stats import Stats
from ..settings import Settings


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
    #: "name url" of branches kept by xdist workers, reported by the controller.
    kept_lines: list[str] = field(default_factory=list)
    #: A worker could not write the schema diff: the run fails.
    diff_failed: bool = False

    @property
    def effective_settings(self) -> Settings:
        return self.fixture_settings or self.settings

    def use_settings(self, settings: Settings) -> None:
        self.fixture_settings = settings
        if self.manager is not None:
            self.manager.settings = settings

    def get_manager(self) -> BranchManager:
        if self.manager is None:
            self.manager = BranchManager(
                self.effective_settings, run_id=self.run_id, worker_id=self.worker_id, stats=self.stats
            )
        return self.manager

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None


STATE = pytest.StashKey[RunState]()
