"""Schema comparison rules that need no server: view text equivalence, type widening, and
what a key or foreign key enforces.

What PostgreSQL itself reports about a schema is tested against a server in
``tests/integration/test_schema_catalog.py``; these are the rules applied to what it reports.
"""

from __future__ import annotations

import pytest

from pytest_dbbranch.schema import Schema, SchemaDiff, diff_schemas
from pytest_dbbranch.schema.equivalence import IndexKey, deferral, foreign_key, index_key, is_widening
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


def test_index_key_reads_columns_expressions_and_predicates() -> None:
    """Keys compare by what they enforce: names, opclasses, ordering and storage do not count."""
    key = index_key(
        'CREATE UNIQUE INDEX "odd, name" ON public.items USING btree (lower(sku), "Qty" DESC,'
        " code text_pattern_ops) INCLUDE (note) NULLS NOT DISTINCT WITH (fillfactor='70') WHERE (qty > 0)"
    )
    assert key == IndexKey("btree", ("lower(sku)", "Qty", "code"), "(qty > 0)", True)
    plain = index_key("CREATE UNIQUE INDEX k ON ONLY public.items USING btree (code)")
    assert plain == IndexKey("btree", ("code",), None, False)
    assert not plain.implies(key), "a NULLS DISTINCT key does not imply a NULLS NOT DISTINCT one"
    assert IndexKey("btree", ("code",), None, True).implies(key)
    assert not key.implies(plain), "a partial key does not cover every row"
    assert index_key("not an index") is None


def test_foreign_key_reads_its_target_and_strictness() -> None:
    fk = foreign_key(
        'FOREIGN KEY (a, "B") REFERENCES billing.t(x, y) MATCH FULL ON UPDATE CASCADE ON DELETE SET NULL (a)'
        " DEFERRABLE INITIALLY DEFERRED NOT VALID"
    )
    assert fk is not None
    assert fk.target == (("a", "B"), "billing.t", ("x", "y"))
    assert (fk.match_full, fk.on_update, fk.on_delete, fk.deferral) == (True, "CASCADE", "SET NULL (a)", 2)
    plain = foreign_key('FOREIGN KEY (a, "B") REFERENCES billing.t(x, y)')
    assert (
        plain is not None and not plain.at_most_as_strict_as(fk) and fk.at_most_as_strict_as(plain) is False
    )
    assert foreign_key("CHECK ((a > 0))") is None
    assert deferral("UNIQUE (a) DEFERRABLE") == 1 and deferral("UNIQUE (a)") == 0
