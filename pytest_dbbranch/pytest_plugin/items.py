"""Migration checks as ordinary test items: reported, selectable with ``-k``, and run with
fixtures, so an overridden ``dbbranch_settings`` reaches them as it reaches the tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..errors import DbBranchError

SUITE = "dbbranch-migrations"


class MigrationCheckSuite(pytest.Collector):
    """The parent of the check items, placed in the folder that holds every collected test so
    that conftest fixtures of that folder apply to the checks too."""

    def collect(self) -> list[pytest.Item]:  # pragma: no cover - built by the plugin, not collected
        return []


class MigrationCheckItem(pytest.Function):
    def __init__(self, *, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, DbBranchError):
            return f"migration check '{self.check}' failed:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"dbbranch migration check: {self.check}"


def _runner(check: str) -> Callable[..., None]:
    def run(dbbranch_manager: Any) -> None:
        from ..errors import CheckNotApplicable
        from ..review import MigrationChecks

        checks = MigrationChecks(dbbranch_manager)
        try:
            checks.run(check)
        except CheckNotApplicable as exc:
            pytest.skip(str(exc))
        for note in checks.notes:
            print(f"not checked: {note}")

    run.__name__ = f"check_{check.replace('-', '_')}"
    return run


def make_items(
    session: pytest.Session, items: Sequence[pytest.Item], checks: Sequence[str]
) -> list[pytest.Item]:
    parent = _common_folder(session, items)
    suite = MigrationCheckSuite.from_parent(parent, name=SUITE)
    return [
        MigrationCheckItem.from_parent(suite, name=check, check=check, callobj=_runner(check))
        for check in checks
    ]


def _common_folder(session: pytest.Session, items: Sequence[pytest.Item]) -> pytest.Collector:
    """The deepest folder node that is an ancestor of every collected item (the session when
    nothing was collected)."""
    chains = [[n for n in item.listchain() if isinstance(n, pytest.Directory)] for item in items]
    if not chains:
        return session
    common: pytest.Collector = session
    for nodes in zip(*chains, strict=False):
        first = nodes[0]
        if all(Path(str(n.path)) == Path(str(first.path)) for n in nodes):
            common = first
        else:
            break
    return common
