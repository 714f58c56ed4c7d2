"""What a reviewer wants to know about a migration: the checks run on production-shaped data,
and the schema difference it makes."""

from .checks import CHECKS, MigrationChecks
from .diff import schema_diff

__all__ = ["CHECKS", "MigrationChecks", "schema_diff"]
