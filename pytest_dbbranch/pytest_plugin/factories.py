"""Declare branch fixtures with your own scope, source, Alembic config or revision.

    from pytest_dbbranch import branch_fixture
    legacy_db = branch_fixture(scope="module", revision="0001")

The built-in fixtures are made by the same factory, so a custom fixture behaves exactly like
``db_branch_info`` (naming, keep-on-failure, the marker, clear errors).
"""

from __future__ import annotations

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

    @pytest.fixture(scope=scope)
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

    return _branch
