"""Schema comparison rules that need no server: view text equivalence and type widening.

What PostgreSQL itself reports about a schema is tested against a server in
``tests/integration/test_schema_catalog.py``; these are the rules applied to what it reports.
"""

from __future__ import annotations

import pytest

from pytest_dbbranch.schema import Schema, SchemaDiff, diff_schemas
from pytest_dbbranch.schema.equivalence import is_widening
from pytest_dbbranch.schema.model import View


def rows(diff: SchemaDiff) -> list[tuple[str, str, str | None, str, bool]]:
    return [(c.kind, c.action, c.table, c.name, c.breaking) for c in diff.changes]


def test_view_text_tolerates_column_qualifiers_only() -> None:
    """PostgreSQL 16 prints single-table views without column qualifiers; 15 adds them."""

    def with_view(definition: str) -> Schema:
        return Schema(views={"public.v": View("public", "v", definition, False)})

    older = with_view("SELECT items.id FROM public.items WHERE items.qty > 0;")
    assert diff_schemas(older, with_view("SELECT id FROM public.items WHERE qty > 0;")).empty
    moved = diff_schemas(older, with_view("SELECT id FROM billing.items WHERE qty > 0;"))
    assert rows(moved) == [("view", "changed", None, "public.v", False)]


@pytest.mark.parametrize(
    ("old", "new", "widening"),
    [
        ("smallint", "bigint", True),
        ("bigint", "integer", False),
        ("real", "double precision", True),
        ("character varying(5)", "character varying", True),
        ("character varying", "character varying(5)", False),
        ("character varying(5)", "character varying(4)", False),
        ("numeric(8,2)", "numeric", True),
        ("numeric", "numeric(8,2)", False),
        ("numeric(8,2)", "numeric(9,3)", False),
        ("integer[]", "bigint[]", True),
        ("timestamp without time zone", "timestamp with time zone", False),
        ("integer", "numeric", False),
    ],
)
def test_widening(old: str, new: str, widening: bool) -> None:
    """A type change is safe for old code only when every old value fits the new type."""
    assert is_widening(old, new) is widening
