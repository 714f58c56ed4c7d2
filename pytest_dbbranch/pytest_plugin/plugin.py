"""pytest hooks, options and the default fixtures; the branch logic lives in ``manager``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from .. import names
from ..branching.branch import Branch
from ..branching.manager import BranchManager
from ..branching.stats import Stats
from ..errors import ConfigError, DbBranchError
from ..settings import SPECS, Settings, resolve
from .factories import MARKER, branch_fixture

_SECTION = "dbbranch"


@dataclass
class _RunState:
    settings: Settings
    run_id: str
    worker_id: str | None
    stats: Stats = field(default_factory=Stats)
    manager: BranchManager | None = None
    #: "name url" of branches kept by xdist workers, reported by the controller.
    kept_lines: list[str] = field(default_factory=list)

    def get_manager(self) -> BranchManager:
        if self.manager is None:
            self.manager = BranchManager(
                self.settings, run_id=self.run_id, worker_id=self.worker_id, stats=self.stats
            )
        return self.manager

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None


_STATE = pytest.StashKey[_RunState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(_SECTION, "pytest-dbbranch: a database branch per test")
    for spec in SPECS:
        text = f"{spec.help} [env {spec.env}, ini {spec.ini}]"
        if spec.flag:
            group.addoption(spec.option, dest=spec.dest, action="store_true", default=None, help=text)
        else:
            group.addoption(spec.option, dest=spec.dest, default=None, help=text, choices=spec.choices)
        parser.addini(spec.ini, spec.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(revision=None, source=None, alembic_ini=None, keep=None, url=None): settings "
        "for the branch fixtures of this test or module (e.g. an older Alembic revision)",
    )
    root = config.inipath.parent if config.inipath else config.rootpath
    try:
        settings = resolve(
            options={spec.name: config.getoption(spec.dest) for spec in SPECS},
            env=os.environ,
            ini={spec.name: config.getini(spec.ini) for spec in SPECS},
            root=root,
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-dbbranch: {exc}") from None
    workerinput = getattr(config, "workerinput", None)
    run_id = workerinput.get("dbbranch_run_id") if workerinput else None
    worker_id = workerinput.get("workerid") if workerinput else None
    config.stash[_STATE] = _RunState(settings, run_id or names.new_run_id(), worker_id)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "dbbranch-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


class _XdistHooks:
    """Share one run id with every worker, and bring their counters home."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dbbranch_run_id"] = self.config.stash[_STATE].run_id

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        if "dbbranch_stats" in output:
            self.config.stash[_STATE].stats.merge(output["dbbranch_stats"])
        self.config.stash[_STATE].kept_lines.extend(output.get("dbbranch_kept", []))


class MigrationCheckItem(pytest.Item):
    """One migration check as an ordinary test item: reported, selectable with -k."""

    def __init__(self, *, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        from ..review.checks import MigrationChecks

        MigrationChecks(self.config.stash[_STATE].get_manager()).run(self.check)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, DbBranchError):
            return f"migration check '{self.check}' failed:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"dbbranch migration check: {self.check}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Before -k and -m deselect, so the checks can be selected like any test."""
    state = config.stash.get(_STATE, None)
    if state is None or not state.settings.check_migrations:
        return
    from ..review.checks import CHECKS

    checks = [c for c in CHECKS if c != "models-match" or state.settings.models]
    items[:0] = [
        MigrationCheckItem.from_parent(session, name=f"dbbranch-migrations::{check}", check=check)
        for check in checks
    ]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Runs before the terminal summary: the pool's last drops are counted in it."""
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is None and state.settings.schema_diff:
        _write_schema_diff(session, state)
    if state.manager is not None:
        state.kept_lines.extend(_kept_line(b) for b in state.manager.kept)
        state.close()
    if workeroutput is not None:
        workeroutput["dbbranch_kept"] = list(state.kept_lines)
        workeroutput["dbbranch_stats"] = state.stats.to_dict()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for branch in _branches_of(item):
            branch.failed = True
            if branch.settings.keep in ("failed", "always"):
                report.sections.append(
                    (_SECTION, f"branch {branch.name} is kept for inspection: {branch.display_url}\n")
                )
    return report


def _write_schema_diff(session: pytest.Session, state: _RunState) -> None:
    """The review artefact of a run: written by the controller once, after the tests."""
    from ..schema import render_json, render_markdown

    settings = state.settings
    assert settings.schema_diff is not None
    path = settings.resolve_path(settings.schema_diff)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        diff = state.get_manager().schema_diff()
    except DbBranchError as exc:
        if reporter is not None:
            reporter.write_line(f"pytest-dbbranch: no schema diff written: {exc}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    text = render_json(diff) if settings.diff_format == "json" else render_markdown(diff)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if reporter is not None:
        breaking = f", {len(diff.breaking)} breaking" if diff.breaking else ""
        reporter.write_line(f"pytest-dbbranch: schema diff ({len(diff.changes)} changes{breaking}) -> {path}")


def _branches_of(item: pytest.Item) -> Iterator[Branch]:
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Branch) and id(value) not in seen:
            seen.add(id(value))
            yield value


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or not state.stats.used:
        return
    terminalreporter.section(_SECTION)
    for line in state.stats.summary_lines():
        terminalreporter.write_line(line)
    for line in state.kept_lines:
        terminalreporter.write_line(f"kept: {line}")


def _kept_line(branch: Branch) -> str:
    return f"{branch.name} {branch.display_url}"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbbranch_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved settings; override this fixture to compute them yourself."""
    return pytestconfig.stash[_STATE].settings


@pytest.fixture(scope="session")
def dbbranch_manager(pytestconfig: pytest.Config) -> BranchManager:
    """The run's branch manager; closed at session finish, after the session's fixtures."""
    return pytestconfig.stash[_STATE].get_manager()


db_branch_info = branch_fixture("function")
db_branch_module_info = branch_fixture("module")
db_branch_session_info = branch_fixture("session")


@pytest.fixture
def db_branch(db_branch_info: Branch) -> psycopg.Connection[Any]:
    """A psycopg connection to this test's own branch of the migrated snapshot."""
    return db_branch_info.connection


@pytest.fixture(scope="module")
def db_branch_module(db_branch_module_info: Branch) -> psycopg.Connection[Any]:
    """A connection to a branch shared by the tests of one module."""
    return db_branch_module_info.connection


@pytest.fixture(scope="session")
def db_branch_session(db_branch_session_info: Branch) -> psycopg.Connection[Any]:
    """A connection to a branch shared by the whole session (per xdist worker)."""
    return db_branch_session_info.connection


@pytest.fixture
def db_branch_engine(db_branch_info: Branch) -> Any:
    """A SQLAlchemy engine bound to this test's branch."""
    return db_branch_info.engine()


@pytest.fixture(scope="session")
def lakebase_emulator(dbbranch_manager: BranchManager) -> Iterator[Any]:
    """A Lakebase emulator for this session, backed by the run's PostgreSQL server (the
    embedded one unless a URL is configured), with a project ``demo``. Point a
    ``databricks.sdk.WorkspaceClient(host=emulator.url, token=emulator.token)`` at it."""
    from ..backends.postgres import PostgresBackend
    from ..emulator import LakebaseEmulator

    backend = dbbranch_manager.backend(dataclasses.replace(dbbranch_manager.settings, backend="postgres"))
    assert isinstance(backend, PostgresBackend)
    emulator = LakebaseEmulator(backend.server, auto_endpoint=True)
    emulator.start()
    emulator.create_project("demo")
    try:
        yield emulator
    finally:
        emulator.stop()
