"""A database branch per test, module or session: migrate once, fork per test.

The names below are loaded on first use, so importing the package (pytest does, for every
run, through the plugin's entry point) costs nothing until a branch is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .branching.branch import Branch
    from .branching.manager import BranchManager
    from .conninfo import ServerAddress
    from .errors import (
        CheckFailed,
        ConfigError,
        DbBranchError,
        EmbeddedServerError,
        MigrationError,
        NotOursError,
        ServerError,
        SourceError,
    )
    from .pytest_plugin.factories import branch_fixture
    from .settings import Settings

_WHERE = {
    "Branch": ".branching.branch",
    "BranchManager": ".branching.manager",
    "ServerAddress": ".conninfo",
    "CheckFailed": ".errors",
    "ConfigError": ".errors",
    "DbBranchError": ".errors",
    "EmbeddedServerError": ".errors",
    "MigrationError": ".errors",
    "NotOursError": ".errors",
    "ServerError": ".errors",
    "SourceError": ".errors",
    "branch_fixture": ".pytest_plugin.factories",
    "Settings": ".settings",
}

__all__ = [
    "Branch",
    "BranchManager",
    "CheckFailed",
    "ConfigError",
    "DbBranchError",
    "EmbeddedServerError",
    "MigrationError",
    "NotOursError",
    "ServerAddress",
    "ServerError",
    "Settings",
    "SourceError",
    "__version__",
    "branch_fixture",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
