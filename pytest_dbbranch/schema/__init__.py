"""The schema of a PostgreSQL database as a comparable model, the difference between two of
them, and that difference rendered for reviewers."""

from .catalog import read_schema
from .diff import Change, SchemaDiff, diff_schemas
from .model import Schema
from .render import render_json, render_markdown

__all__ = ["Change", "Schema", "SchemaDiff", "diff_schemas", "read_schema", "render_json", "render_markdown"]
