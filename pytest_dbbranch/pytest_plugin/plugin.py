"""pytest hooks, options and the default fixtures; the branch logic lives in ``branching``."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from .. import names
from ..errors import ConfigError, DbBranchError, MigrationError
from ..progress import Progress, Writer
from ..settings import SPECS, Settings, resolve
from .factories import MARKER_HELP, branch_fixture, client_fixture
from .items import make_items
from .prebuild import (
    forget_requests,
    function_branch_count,
    read_request,
    template_requests,
    variants,
    write_request,
)
from .signals import stop_when_orphaned, terminate_like_ctrl_c
from .state import STATE, RunState, fatal_exit_code

if TYPE_CHECKING:
    from ..branching.branch import Branch
    from ..branching.manager import BranchManager
    from ..emulator import LakebaseEmulator

_SECTION = "dbbranch"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(_SECTION, "pytest-dbbranch: a database branch per test")
    for spec in SPECS:
        text = f"{spec.help} [env {spec.env}, ini {spec.ini}]"
        if spec.flag:
            group.addoption(spec.option, dest=spec.dest, action="store_true", default=None, help=text)
        else:
            group.addoption(spec.option, dest=spec.dest, default=None, help=text, choices=spec.choices)
        try:
            parser.addini(spec.ini, spec.help, type=spec.ini_type, default=None)
        except (TypeError, ValueError, AssertionError, KeyError):
            parser.addini(spec.ini, spec.help, default=None)  # pytest before 9.2: text only


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
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
    config.stash[STATE] = RunState(settings, run_id or names.new_run_id(), worker_id)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "dbbranch-xdist")
    terminate_like_ctrl_c()
    if workerinput is not None:
        stop_when_orphaned()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is not None:
        state.close()


class _XdistHooks:
    """Share one run id with every worker, and bring their counters and reports home."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.prepared = False

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dbbranch_run_id"] = self.config.stash[STATE].run_id

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """The first worker to report its collection says what templates the run needs: the
        controller builds them before any test is scheduled."""
        if self.prepared:
            return
        self.prepared = True
        state = self.config.stash[STATE]
        requests = read_request(state.run_id, node.gateway.id)
        if requests is None and state.settings.effective_backend == "lakebase":
            # Settings computed by a conftest fixture: still, the run's Lakebase branch must
            # exist before the workers attach to it.
            requests = [{}]
        if requests:
            _prepare(self.config, state, requests)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        state = self.config.stash[STATE]
        if "dbbranch_stats" in output:
            state.stats.merge(output["dbbranch_stats"])
        state.kept_lines.extend(output.get("dbbranch_kept", []))
        state.notes.extend(n for n in output.get("dbbranch_notes", []) if n not in state.notes)
        if output.get("dbbranch_fatal") and state.fatal is None:
            message, code = output["dbbranch_fatal"]
            state.fatal = (message, code)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for line, red in output.get("dbbranch_messages", []):
            if reporter is not None:
                reporter.write_line(line, red=red)
            if red:
                state.diff_failed = True


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Before -k and -m deselect, so the checks can be selected like any test. Then, if any
    collected test asks for a branch, the settings are checked before the first test runs."""
    state = config.stash.get(STATE, None)
    if state is None:
        return
    if state.settings.check_migrations:
        from ..review import CHECKS

        checks = [c for c in CHECKS if c != "models-match" or state.settings.models]
        items[:0] = make_items(session, items, checks)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Once the items are final (after -k and -m): what templates they fork from. An xdist
    worker writes it down for the controller (first, before xdist reports the collection);
    without xdist this process checks the settings and builds them now."""
    state = session.config.stash.get(STATE, None)
    if state is None or session.config.option.collectonly:
        return
    requests = template_requests(session.items)
    state.function_branches = function_branch_count(session.items)
    if getattr(session.config, "workerinput", None) is not None:
        write_request(state.run_id, state.worker_id or "gw", requests)
    elif requests:
        _prepare(session.config, state, requests)


def _prepare(config: pytest.Config, state: RunState, requests: list[dict[str, str]]) -> None:
    """Check the settings, then build every template the tests fork from, outside any test.
    A configuration error is one usage error (exit 4) and no test runs; a template of the
    run's own settings that does not build stops the run with its error; a marker's template
    that does not build fails only the tests that use it."""
    from ..branching.preflight import check

    try:
        check(state.settings)
    except DbBranchError as exc:
        raise pytest.UsageError(f"pytest-dbbranch: {exc}") from None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    manager = state.get_manager()
    manager.progress = Progress(_terminal_writer(reporter)) if reporter is not None else manager.progress
    wanted = variants(state.settings, requests)
    manager.want(wanted)
    for settings in wanted:
        try:
            manager.plan(settings)
        except DbBranchError as exc:
            if settings is not state.settings and settings != state.settings:
                # A marker's or factory's template: its tests meet the error themselves,
                # each named by its own marker or factory (not by this preparation).
                manager.forget_failure(settings)
                continue
            if isinstance(exc, MigrationError) and state.settings.check_migrations:
                continue  # the 'applies' check reports it, the others say they were skipped
            code = fatal_exit_code(exc) or int(pytest.ExitCode.TESTS_FAILED)
            if code == pytest.ExitCode.USAGE_ERROR:
                raise pytest.UsageError(f"pytest-dbbranch: {exc}") from None
            pytest.exit(f"pytest-dbbranch: {exc}", returncode=code)


def _terminal_writer(reporter: Any) -> Writer:
    def write(text: str, end: bool) -> None:
        if end:
            reporter.write_line(text)
        else:
            reporter.ensure_newline()
            reporter.write(text)

    return write


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Last, after pytest has torn the session's fixtures down (on Ctrl-C too): closing the
    manager may stop the embedded server, which their teardown still needs. Still before the
    terminal summary, so the pool's last drops are counted in it."""
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    messages = _write_schema_diff(session, state) if _writes_schema_diff(session, state) else []
    if state.manager is not None:
        state.kept_lines.extend(_kept_line(b) for b in state.manager.kept)
        state.notes.extend(n for n in state.manager.notes if n not in state.notes)
        state.close()
    if getattr(session.config, "workerinput", None) is None:
        forget_requests(state.run_id)
    if workeroutput is not None:
        workeroutput["dbbranch_kept"] = list(state.kept_lines)
        workeroutput["dbbranch_stats"] = state.stats.to_dict()
        workeroutput["dbbranch_messages"] = messages
        workeroutput["dbbranch_notes"] = list(state.notes)
        workeroutput["dbbranch_fatal"] = state.fatal
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line, red in messages:
        if reporter is not None:
            reporter.write_line(line, red=red)
        state.diff_failed = state.diff_failed or red
    if state.diff_failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if state.fatal is not None:
        message, code = state.fatal
        if reporter is not None:
            reporter.write_line(f"pytest-dbbranch: {message}", red=True)
        session.exitstatus = code


def _writes_schema_diff(session: pytest.Session, state: RunState) -> bool:
    """One process writes it: the only one without xdist, else the first worker (workers
    know the settings a conftest's ``dbbranch_settings`` fixture gave; the controller runs
    no fixtures)."""
    if not state.effective_settings.schema_diff:
        return False
    if getattr(session.config, "workerinput", None) is not None:
        return state.worker_id == "gw0"
    return not getattr(session.config.option, "numprocesses", None)


def _write_schema_diff(session: pytest.Session, state: RunState) -> list[tuple[str, bool]]:
    """The review artefact of a run, written once after the tests; returns the lines to show."""
    from ..review import schema_diff
    from ..schema import render_json, render_markdown

    settings = state.effective_settings
    assert settings.schema_diff is not None
    path = settings.resolve_path(settings.schema_diff)
    try:
        diff = schema_diff(state.get_manager(), settings)
    except DbBranchError as exc:
        return [(f"pytest-dbbranch: no schema diff written: {exc}", True)]
    text = render_json(diff) if settings.diff_format == "json" else render_markdown(diff)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    breaking = f", {len(diff.breaking)} breaking" if diff.breaking else ""
    return [(f"pytest-dbbranch: schema diff ({len(diff.changes)} changes{breaking}) -> {path}", False)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for branch in _branches_of(item):
            branch.failed = True
            if branch.settings.keep in ("failed", "always"):
                hint = (
                    ""
                    if branch.settings.url
                    else f" (`dbbranch connect {branch.name}` opens it after the run)"
                )
                report.sections.append(
                    (_SECTION, f"branch {branch.name} is kept for inspection: {branch.display_url}{hint}\n")
                )
        location = getattr(call.excinfo.value, "location", None) if call.excinfo else None
        if location is not None:
            # A migration at fault: junit XML and CI annotations point at its file and line.
            path, line = location
            report.location = (_relative(item.config, path), line - 1, report.location[2])
    return report


def _relative(config: pytest.Config, path: str) -> str:
    try:
        return os.path.relpath(path, config.rootpath)
    except ValueError:  # another drive (Windows)
        return path


def _branches_of(item: pytest.Item) -> Iterator[Branch]:
    branch_module = sys.modules.get("pytest_dbbranch.branching.branch")
    if branch_module is None:
        return  # no branch was ever made in this process (nor psycopg loaded)
    Branch = branch_module.Branch
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Branch) and id(value) not in seen:
            seen.add(id(value))
            yield value


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or not (state.stats.used or state.notes):
        return
    terminalreporter.section(_SECTION)
    for line in state.stats.summary_lines():
        terminalreporter.write_line(line)
    for line in state.kept_lines:
        terminalreporter.write_line(f"kept: {line}")
    for note in state.notes:
        terminalreporter.write_line(f"note: {note}")


def _kept_line(branch: Branch) -> str:
    return f"{branch.name} {branch.display_url}"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbbranch_url() -> str | None:
    """The server to branch on, from a fixture: override it in a conftest to hand the plugin a
    server your session starts (a testcontainers ``PostgresContainer``, a server of your own).
    None (the default) leaves the settings' URL, or the embedded server."""
    return None


@pytest.fixture(scope="session")
def dbbranch_settings(pytestconfig: pytest.Config, dbbranch_url: str | None) -> Settings:
    """The resolved settings. Override this fixture (in a conftest) to compute them yourself:
    the branch fixtures, the manager, the migration checks and the schema diff all use what it
    returns. (Templates are then built by the first test that needs one, not before.)"""
    settings: Settings = pytestconfig.stash[STATE].settings
    if dbbranch_url:
        origins = {**settings.origins, "url": "the dbbranch_url fixture"}
        settings = replace(settings, url=dbbranch_url, origins=origins)
    return settings


@pytest.fixture(scope="session")
def dbbranch_manager(
    pytestconfig: pytest.Config, dbbranch_settings: Settings, dbbranch_url: str | None
) -> Iterator[BranchManager]:
    """The run's branch manager; closed at session finish, after the session's fixtures. With
    a server from the ``dbbranch_url`` fixture, closed before that fixture stops its server
    (its pool's last drops and its connections need the server)."""
    state = pytestconfig.stash[STATE]
    state.use_settings(dbbranch_settings)
    manager = state.get_manager()
    yield manager
    if dbbranch_url:
        state.kept_lines.extend(_kept_line(b) for b in manager.kept)
        manager.kept.clear()
        manager.close()


# The branches, one per scope; every client fixture below is a view of one of them.
db_branch_info = branch_fixture("function")
db_branch_module_info = branch_fixture("module")
db_branch_session_info = branch_fixture("session")

#: psycopg connections (``db_branch`` is the test's own branch of the migrated snapshot).
db_branch = client_fixture("function", "connection")
db_branch_module = client_fixture("module", "connection")
db_branch_session = client_fixture("session", "connection")
#: psycopg ``AsyncConnection`` s, for pytest-asyncio and anyio tests.
db_branch_async = client_fixture("function", "async_connection")
db_branch_module_async = client_fixture("module", "async_connection")
db_branch_session_async = client_fixture("session", "async_connection")
#: SQLAlchemy engines (psycopg 3).
db_branch_engine = client_fixture("function", "engine")
db_branch_module_engine = client_fixture("module", "engine")
db_branch_session_engine = client_fixture("session", "engine")
#: SQLAlchemy ORM sessions; in rollback isolation their commits are savepoints.
db_branch_orm = client_fixture("function", "orm_session")
db_branch_module_orm = client_fixture("module", "orm_session")
db_branch_session_orm = client_fixture("session", "orm_session")
#: SQLAlchemy ``AsyncSession`` s (the ``[async]`` extra brings greenlet).
db_branch_orm_async = client_fixture("function", "orm_async_session")
db_branch_module_orm_async = client_fixture("module", "orm_async_session")
db_branch_session_orm_async = client_fixture("session", "orm_async_session")


@pytest.fixture(scope="session")
def dbbranch_lakebase_emulator(dbbranch_manager: BranchManager) -> Iterator[LakebaseEmulator]:
    """A Lakebase emulator for this session with a project ``demo``: one PostgreSQL cluster
    per branch, endpoints on their own 127.0.0.N:5432, TLS and short-lived tokens, with fast
    operations (0.05 s) so suites stay quick. Point a
    ``databricks.sdk.WorkspaceClient(host=emulator.url, token=emulator.token)`` at it; the run's
    PostgreSQL server is its ``backing`` (for ``create_project(..., source_database=...)``)."""
    from ..emulator import LakebaseEmulator

    backing = dbbranch_manager.server_address(replace(dbbranch_manager.settings, backend="postgres"))
    emulator = LakebaseEmulator(backing, timing="fast")
    emulator.start()
    try:
        emulator.create_project("demo")
        yield emulator
    finally:
        emulator.stop()
