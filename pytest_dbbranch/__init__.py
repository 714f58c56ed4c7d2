"""A database branch per test, module or session: migrate once, fork per test."""

from ._version import __version__
from .backends.base import Backend, BranchRecord, Tag
from .branching.branch import Branch
from .branching.manager import BranchManager
from .conninfo import ServerAddress
from .errors import (
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

__all__ = [
    "Backend",
    "Branch",
    "BranchManager",
    "BranchRecord",
    "ConfigError",
    "DbBranchError",
    "EmbeddedServerError",
    "MigrationError",
    "NotOursError",
    "ServerAddress",
    "ServerError",
    "Settings",
    "SourceError",
    "Tag",
    "__version__",
    "branch_fixture",
]
