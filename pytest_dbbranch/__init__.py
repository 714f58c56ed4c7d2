"""A database branch per test, module or session: migrate once, fork per test."""

from .backend import Backend, BranchRecord, Tag
from .branch import Branch
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
from .factories import branch_fixture
from .manager import BranchManager
from .settings import Settings

__version__ = "0.1.0"

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
    "branch_fixture",
]
