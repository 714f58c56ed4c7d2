"""The schema of a PostgreSQL database as a comparable model, the difference between two of
them, which of those differences break code still running against the old schema, and that
difference rendered for reviewers."""

from .catalog import read_schema
from .diff import Change, SchemaDiff, diff_schemas
from .model import SCHEMA_FORMAT, Schema
from .render import render_json, render_markdown
from .rules import BREAKING_RULES, BreakingRule

__all__ = [
    "BREAKING_RULES",
    "SCHEMA_FORMAT",
    "BreakingRule",
    "Change",
    "Schema",
    "SchemaDiff",
    "diff_schemas",
    "read_schema",
    "render_json",
    "render_markdown",
]
