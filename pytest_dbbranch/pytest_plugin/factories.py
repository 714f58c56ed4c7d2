"""Declare branch fixtures with your own scope, source, Alembic config or revision.

    from pytest_dbbranch import branch_fixture
    legacy_db = branch_fixture(scope="module", revision="0001")

The built-in fixtures are made by the same factory, so a custom fixture behaves exactly like
``db_branch_info`` (naming, keep-on-failure, the marker, clear errors).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

from ..errors import DbBranchError
from ..settings import OVERRIDABLE, Settings
from .state import STATE, fatal_exit_code

if TYPE_CHECKING:
    from ..branching.branch import Branch

MARKER = "dbbranch"

Scope = Literal["session", "package", "module", "class", "function"]

#: The marker's line in ``pytest --markers``, from the one list of overridable settings.
MARKER_HELP = (
    f"{MARKER}({', '.join(f'{name}=None' for name in OVERRIDABLE)}): settings for the branch "
    "fixtures of this test or module (e.g. an older Alembic revision)"
)


def branch_fixture(
    scope: Scope = "function",
    *,
    url: str | None = None,
    source: str | None = None,
    alembic_ini: str | None = None,
    migrations: str | None = None,
    revision: str | None = None,
    keep: str | None = None,
    isolation: str | None = None,
) -> Any:
    """Make a fixture that yields a :class:`Branch` and drops it at teardown. The keyword
    arguments are the settings a marker may change too (``settings.OVERRIDABLE``)."""
    given = {name: value for name, value in locals().items() if name in OVERRIDABLE and value is not None}
    # Named by argument, with values except the URL's (it may hold a password).
    where = "branch_fixture({})".format(
        ", ".join(f"{k}=..." if k == "url" else f"{k}={v!r}" for k, v in given.items())
    )

    def _branch(request: pytest.FixtureRequest) -> Iterator[Branch]:
        failure: str | None = None
        overridden = bool(given)
        try:
            manager = request.getfixturevalue("dbbranch_manager")
            settings: Settings = request.getfixturevalue("dbbranch_settings")
            if given:
                settings = settings.with_overrides(where, scope=scope, **given)
            marker = request.node.get_closest_marker(MARKER)
            if marker is not None:
                overridden = True
                settings = settings.with_overrides(
                    f"@pytest.mark.{MARKER} on {request.node.nodeid}", scope=scope, **marker.kwargs
                )
            branch = manager.create(
                settings, scope=scope, node_id=request.node.nodeid, fixture_name=request.fixturename
            )
        except DbBranchError as exc:
            failure = str(exc)
            exit_code = fatal_exit_code(exc)
            if exit_code is not None and not overridden:
                # The run's own settings cannot give any test a branch: stop once.
                request.config.stash[STATE].stop(request.session, failure, exit_code)
        if failure is not None:
            # Outside the except block, so the report shows the message and no chain.
            pytest.fail(f"pytest-dbbranch: {failure}", pytrace=False)
        try:
            yield branch
        finally:
            failure = None
            try:
                manager.release(branch)
            except DbBranchError as exc:
                failure = str(exc)
            if failure is not None:
                pytest.fail(f"pytest-dbbranch: {failure}", pytrace=False)

    # Read by the prebuild (which templates the collected tests will fork) before any test.
    _branch.dbbranch_factory = (scope, given)  # type: ignore[attr-defined]
    return pytest.fixture(scope=scope)(_branch)


#: The branch fixture each scope's client fixtures are views of.
INFO_FIXTURES = {
    "function": "db_branch_info",
    "module": "db_branch_module_info",
    "session": "db_branch_session_info",
}

_CLIENTS = {
    "connection": "a psycopg connection",
    "async_connection": "a psycopg AsyncConnection",
    "engine": "a SQLAlchemy Engine",
    "orm_session": "a SQLAlchemy ORM Session",
    "orm_async_session": "a SQLAlchemy AsyncSession",
}
_SHARED_BY = {
    "function": "this test's own branch",
    "module": "a branch shared by the tests of one module",
    "session": "a branch shared by the whole session (per xdist worker)",
}


def client_fixture(scope: Scope, client: str) -> Any:
    """A fixture handing out one client of the branch of ``scope``'s branch fixture, closed at
    that branch's teardown. Its dependency is declared (not looked up), so pytest's fixture
    closure says which tests use a branch."""
    info = INFO_FIXTURES[scope]

    def fixture(**kwargs: Any) -> Any:
        branch = kwargs[info]
        failure = None
        try:
            made = getattr(branch, client)
            return made() if callable(made) else made
        except DbBranchError as exc:  # the server went away under the branch, say
            failure = str(exc)
        pytest.fail(f"pytest-dbbranch: {failure}", pytrace=False)

    fixture.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(info, inspect.Parameter.KEYWORD_ONLY)]
    )
    fixture.__doc__ = f"{_CLIENTS[client].capitalize()} to {_SHARED_BY[scope]}."
    return pytest.fixture(scope=scope)(fixture)
