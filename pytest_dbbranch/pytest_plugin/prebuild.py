"""Templates are built before the first test, by one process, with progress.

Inside a test's setup a build counts toward that test's timeout (pytest-timeout made every
test retry a slow migration and time out), and a long restore is silence. So the process
that runs the session (the xdist controller, or pytest itself without xdist) checks the
settings and builds every template the collected tests will fork from, between collection
and the first test; workers then only fork. Without xdist the collected items are at hand;
with it the controller collects nothing, so each worker writes what its items need to a file
of the run, which the controller reads when that worker reports its collection.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ..settings import Settings

#: The fixtures through which a conftest may compute the settings itself (then nothing can be
#: known before the tests: templates are built lazily, as before).
OVERRIDABLE_FIXTURES = ("dbbranch_settings", "dbbranch_url")
#: Settings that decide which template a fixture forks (the others change branches only).
TEMPLATE_KEYS = ("url", "source", "alembic_ini", "revision")


def template_requests(items: Iterable[pytest.Item]) -> list[dict[str, str]] | None:
    """The distinct setting overrides (marker and factory arguments) under which the items'
    branch fixtures fork, ``{}`` being the run's own settings; an empty list when no item asks
    for a branch; None when a conftest overrides the settings fixtures."""
    found: dict[str, dict[str, str]] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or not uses_branches(item):
            continue
        if "dbbranch_manager" in getattr(item, "fixturenames", ()):
            found["{}"] = {}  # a migration check: the run's own template
        for name in OVERRIDABLE_FIXTURES:
            # Branch fixtures look the manager up at run time, so these are not in the item's
            # closure: ask which definition the item would get.
            defs = item.session._fixturemanager.getfixturedefs(name, item)
            if defs and getattr(defs[-1].func, "__module__", "") != "pytest_dbbranch.pytest_plugin.plugin":
                return None
        for defs in info.name2fixturedefs.values():
            factory = getattr(defs[-1].func, "dbbranch_factory", None)
            if factory is None:
                continue
            scope, given = factory
            overrides = {k: str(v) for k, v in given.items()}
            marker = _marker_for(item, scope)
            if marker is not None:
                overrides.update({k: str(v) for k, v in marker.kwargs.items()})
            relevant = {k: v for k, v in sorted(overrides.items()) if k in TEMPLATE_KEYS}
            found[json.dumps(relevant, sort_keys=True)] = relevant
    return list(found.values())


def function_branch_count(items: Iterable[pytest.Item]) -> int:
    """How many function-scope branches the items will ask for: one per function-scope
    branch fixture in each item's closure (what the warm pool may fork ahead for)."""
    count = 0
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        for defs in info.name2fixturedefs.values():
            factory = getattr(defs[-1].func, "dbbranch_factory", None)
            if factory is not None and factory[0] == "function":
                count += 1
    return count


def uses_branches(item: pytest.Item) -> bool:
    """Whether the item asks for a branch: a branch fixture (made by ``branch_fixture``) or
    the manager in its fixture closure. (Branch fixtures look the manager up at run time, so
    it is not in their closure.)"""
    if "dbbranch_manager" in getattr(item, "fixturenames", ()):
        return True
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(getattr(defs[-1].func, "dbbranch_factory", None) for defs in info.name2fixturedefs.values())


def _marker_for(item: pytest.Item, scope: str) -> Any:
    """The marker a fixture of ``scope`` sees: the one closest to the node it is set up for."""
    from .factories import MARKER

    node: Any = item
    if scope == "module":
        node = item.getparent(pytest.Module) or item
    elif scope == "class":
        node = item.getparent(pytest.Class) or item
    elif scope in ("session", "package"):
        return None
    return node.get_closest_marker(MARKER)


def variants(base: Settings, requests: list[dict[str, str]]) -> list[Settings]:
    """Settings for each request; one whose arguments are wrong is left to its fixture to report."""
    from ..errors import DbBranchError

    out = []
    for overrides in requests:
        try:
            out.append(base.with_overrides("@pytest.mark.dbbranch / branch_fixture", **overrides))
        except DbBranchError:
            continue
    return out


def request_file(run_id: str, worker: str) -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"pytest-dbbranch-{uid}" / "runs" / run_id / f"{worker}.json"


def write_request(run_id: str, worker: str, requests: list[dict[str, str]] | None) -> None:
    path = request_file(run_id, worker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"requests": requests}))


def read_request(run_id: str, worker: str) -> list[dict[str, str]] | None:
    """What a worker wrote; None if nothing can be known (no file, or overridden settings)."""
    path = request_file(run_id, worker)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    requests = data.get("requests")
    return requests if isinstance(requests, list) else None


def forget_requests(run_id: str) -> None:
    folder = request_file(run_id, "x").parent
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
