"""The schema of a PostgreSQL database as a comparable model, the difference between two of
them, and that difference rendered for reviewers."""

from .diff import Change, SchemaDiff, diff_schemas, render_json, render_markdown
from .model import Schema, read_schema

__all__ = ["Change", "Schema", "SchemaDiff", "diff_schemas", "read_schema", "render_json", "render_markdown"]
