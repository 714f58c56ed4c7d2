"""The breaking rules of ``pytest_dbbranch.schema.rules``, each on both sides, over model objects.

Every rule of ``BREAKING_RULES`` has at least one pair of schemas where it fires (old code
breaks; the change says why and names the rule) and one where the same kind of change is
safe and it stays quiet. What PostgreSQL reports is tested against a server in
``tests/integration/test_schema_oracle.py``, which checks the same verdicts end to end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pytest_dbbranch.schema import Schema, diff_schemas
from pytest_dbbranch.schema.model import (
    OTHER_ROLE,
    Attribute,
    Column,
    CompositeType,
    Constraint,
    Domain,
    EnumType,
    Extension,
    Function,
    Index,
    Namespace,
    Policy,
    Rule,
    Sequence,
    Table,
    Trigger,
    View,
)
from pytest_dbbranch.schema.rules import BREAKING_RULES, RULES_BY_ID

r = dataclasses.replace

ID = Column("id", "integer", False)
SKU = Column("sku", "character varying(32)", False)
QTY = Column("qty", "integer", True)
X = Column("x", "text", True)
ITEMS = Table("public", "items", (ID, SKU, QTY))
LOCATIONS = Table("public", "locations", (Column("code", "text", False),))
BASE = Schema(
    tables={"public.items": ITEMS, "public.locations": LOCATIONS},
    schemas={"public": Namespace("public")},
)


def with_(schema: Schema = BASE, **sections: dict[str, Any]) -> Schema:
    """``schema`` with the given sections' entries added or replaced (``None`` removes one)."""
    changes = {}
    for section, entries in sections.items():
        merged = dict(getattr(schema, section))
        for key, value in entries.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        changes[section] = merged
    return dataclasses.replace(schema, **changes)


def table(*columns: Column, **options: Any) -> Schema:
    """The base with ``items`` holding ``columns`` (default: id, sku, qty) and ``options``."""
    return with_(tables={"public.items": r(ITEMS, columns=columns or ITEMS.columns, **options)})


def index(name: str, definition: str, unique: bool = True, table: str = "items") -> dict[str, Index]:
    return {f"public.{table}.{name}": Index("public", table, name, definition, unique, False)}


def constraint(name: str, kind: str, definition: str, table: str = "items") -> dict[str, Constraint]:
    return {f"public.{table}.{name}": Constraint("public", table, name, kind, definition)}


def unique(name: str, columns: str, table: str = "items", extra: str = "") -> dict[str, dict[str, Any]]:
    """A unique constraint and the index behind it, as the catalog reads them."""
    definition = f"CREATE UNIQUE INDEX {name} ON public.{table} USING btree ({columns})"
    return {
        "constraints": constraint(name, "unique", f"UNIQUE ({columns}){extra}", table),
        "indexes": index(name, definition, True, table),
    }


def check(definition: str, name: str = "c") -> dict[str, Constraint]:
    return constraint(name, "check", definition)


def fk(definition: str, name: str = "fk", table: str = "items") -> dict[str, Constraint]:
    return constraint(name, "foreign key", definition, table)


def function(arguments: str = "amount numeric", result: str = "numeric", body: str = "1.2", **kw: Any) -> Any:
    definition = f"CREATE FUNCTION public.tax({arguments}) RETURNS {result} AS $$ SELECT {body} $$"
    return Function("public", "tax", arguments, result, "function", definition, **kw)


TAX = "public.tax(amount numeric)"


def tax(**kw: Any) -> Schema:
    """The base with one function, ``public.tax(amount numeric)``."""
    return with_(functions={TAX: function(**kw)})


def sequence(**kw: Any) -> Schema:
    values = {"start": 1, "increment": 1, **kw}
    return with_(sequences={"public.numbers": Sequence("public", "numbers", "bigint", **values)})


def trigger(timing: str, table: str = "items", **kw: Any) -> dict[str, Trigger]:
    definition = (
        f"CREATE TRIGGER t {timing} INSERT ON public.{table} FOR EACH ROW EXECUTE FUNCTION public.f()"
    )
    return {f"public.{table}.t": Trigger("public", table, "t", definition, **kw)}


RLS = table(row_security=True)


def policy(permissive: bool = True, roles: tuple[str, ...] = ("PUBLIC",)) -> Schema:
    """The base with RLS on ``items`` and one policy ``p``."""
    made = Policy("public", "items", "p", "ALL", permissive, roles, "true")
    return with_(RLS, policies={"public.items.p": made})


def rule(action: str) -> Schema:
    definition = f"CREATE RULE r AS ON DELETE TO public.items DO {action};"
    return with_(rules={"public.items.r": Rule("public", "items", "r", definition)})


def ext(schema: str = "public", version: str = "1.6", comment: str | None = None) -> Schema:
    return with_(extensions={"citext": Extension("citext", version, schema, comment)})


VIEW = View("public", "v", "SELECT id FROM public.items;", False, (), (Attribute("id", "integer"),))
SKU_TEXT = Attribute("sku", "text")


def view(**kw: Any) -> Schema:
    return with_(views={"public.v": r(VIEW, **kw)})


def enum(*labels: str) -> Schema:
    return with_(enums={"public.mood": EnumType("public", "mood", labels)})


POSINT = Domain("public", "posint", "integer", constraints=(("positive", "CHECK ((VALUE > 0))"),))


def domain(**kw: Any) -> Schema:
    return with_(domains={"public.posint": r(POSINT, **kw)})


A, B = Attribute("a", "integer"), Attribute("b", "text")


def pair(*attributes: Attribute) -> Schema:
    return with_(composites={"public.pair": CompositeType("public", "pair", attributes)})


def partition(bound: str) -> Schema:
    return table(partition_of="public.all_items", partition_bound=f"FOR VALUES IN ({bound})")


FK = "FOREIGN KEY (sku) REFERENCES public.locations(code)"
TAGS = with_(tables={"public.tags": Table("public", "tags", (ID, SKU))})
BILLING = with_(schemas={"billing": Namespace("billing")})

#: (rule, what happens, old schema, new schema, whether the rule fires).
CASES: list[tuple[str, str, Schema, Schema, bool]] = [
    ("table-dropped", "table dropped", BASE, with_(tables={"public.items": None}), True),
    ("table-dropped", "table added", BASE, TAGS, False),
    ("column-dropped", "column dropped", BASE, table(ID, SKU), True),
    ("column-dropped", "nullable column added", BASE, table(ID, SKU, QTY, X), False),
    ("view-dropped", "view dropped", view(), BASE, True),
    ("view-dropped", "view recreated with another body", view(), view(definition="SELECT 1 AS id;"), False),
    ("function-dropped", "function dropped", tax(), BASE, True),
    ("function-dropped", "overload added", tax(),
     with_(tax(), functions={"public.tax(amount integer)": function("amount integer")}), False),
    ("function-signature", "arguments changed", tax(),
     with_(functions={"public.tax(amount numeric, rate numeric)": function("amount numeric, rate numeric")}),
     True),
    ("function-signature", "body changed", tax(), tax(body="1.25"), False),
    ("function-result", "result type changed", tax(), tax(result="integer"), True),
    ("function-result", "volatility changed", tax(), tax(body="1.2 $$ STABLE $$"), False),
    ("type-dropped", "enum dropped", enum("sad", "ok"), BASE, True),
    ("type-dropped", "domain added", BASE, domain(), False),
    ("schema-dropped", "schema dropped", BILLING, BASE, True),
    ("schema-dropped", "schema added", BASE, BILLING, False),
    ("sequence-dropped", "sequence dropped", sequence(), BASE, True),
    ("sequence-dropped", "identity dropped with its sequence",
     with_(table(ID, SKU, r(QTY, identity="by default")), sequences=sequence(owned_by="items.qty").sequences),
     table(ID, SKU, QTY), False),
    ("extension-dropped", "extension dropped", ext(), BASE, True),
    ("extension-dropped", "extension updated", ext(), ext(version="1.8"), False),
    ("extension-moved", "extension moved", ext(), ext(schema="ext"), True),
    ("extension-moved", "extension commented", ext(), ext(comment="text"), False),
    ("enum-label-dropped", "label removed", enum("sad", "ok", "happy"), enum("sad", "happy"), True),
    ("enum-label-dropped", "label added, labels reordered", enum("sad", "ok"), enum("ok", "meh", "sad"),
     False),
    ("attribute-dropped", "attribute removed", pair(A, B), pair(A), True),
    ("attribute-dropped", "attribute narrowed", pair(r(A, type="bigint"), B), pair(A, B), True),
    ("attribute-dropped", "attribute added, another widened", pair(A, B),
     pair(r(A, type="bigint"), B, Attribute("c", "date")), False),
    ("column-required", "NOT NULL column without default", BASE, table(ID, SKU, QTY, r(X, nullable=False)),
     True),
    ("column-required", "NOT NULL column with a default", BASE,
     table(ID, SKU, QTY, r(X, nullable=False, default="'a'::text")), False),
    ("column-narrowed", "varchar(32) to varchar(9)", BASE,
     table(ID, r(SKU, type="character varying(9)"), QTY), True),
    ("column-narrowed", "numeric(10,2) to numeric(8,2)", table(ID, SKU, r(QTY, type="numeric(10,2)")),
     table(ID, SKU, r(QTY, type="numeric(8,2)")), True),
    ("column-narrowed", "bigint to integer", table(ID, SKU, r(QTY, type="bigint")), BASE, True),
    ("column-narrowed", "text to varchar(n)", table(ID, SKU, r(QTY, type="text")),
     table(ID, SKU, r(QTY, type="character varying(20)")), True),
    ("column-narrowed", "integer to bigint", BASE, table(ID, SKU, r(QTY, type="bigint")), False),
    ("column-narrowed", "varchar(32) to text", BASE, table(ID, r(SKU, type="text"), QTY), False),
    ("column-not-null", "made NOT NULL", BASE, table(ID, SKU, r(QTY, nullable=False)), True),
    ("column-not-null", "NOT NULL dropped", BASE, table(ID, r(SKU, nullable=True), QTY), False),
    ("column-default-lost", "NOT NULL column lost its default", table(ID, r(SKU, default="'x'"), QTY), BASE,
     True),
    ("column-default-lost", "nullable column lost its default", table(ID, SKU, r(QTY, default="0")), BASE,
     False),
    ("column-generated", "made generated", BASE, table(ID, SKU, r(QTY, generated="(id * 2)")), True),
    ("column-generated", "generated expression changed", table(ID, SKU, r(QTY, generated="(id * 2)")),
     table(ID, SKU, r(QTY, generated="(id * 3)")), False),
    ("column-identity-always", "identity made ALWAYS", table(r(ID, identity="by default"), SKU, QTY),
     table(r(ID, identity="always"), SKU, QTY), True),
    ("column-identity-always", "identity made BY DEFAULT", table(r(ID, identity="always"), SKU, QTY),
     table(r(ID, identity="by default"), SKU, QTY), False),
    ("unique-added", "unique key on existing columns", BASE, with_(**unique("items_sku_key", "sku")), True),
    ("unique-added", "unique key narrowed", with_(**unique("items_key", "sku, qty")),
     with_(**unique("items_key", "sku")), True),
    ("unique-added", "no longer deferrable", with_(**unique("items_key", "sku", extra=" DEFERRABLE")),
     with_(**unique("items_key", "sku")), True),
    ("unique-added", "key widened by a column with a default", with_(**unique("items_key", "sku")),
     with_(table(ID, SKU, QTY, Column("tenant", "integer", False, default="1")),
           **unique("items_key", "sku, tenant")), False),
    ("unique-added", "key replaced under another name", with_(**unique("items_sku_key", "sku")),
     with_(**unique("uq_items_sku", "sku")), False),
    ("unique-added", "unique key on a new nullable column", BASE,
     with_(table(ID, SKU, QTY, X), **unique("k", "x")), False),
    ("unique-added", "unique key of a new table", BASE, with_(TAGS, **unique("tags_id_key", "id", "tags")),
     False),
    ("check-added", "check added", BASE, with_(constraints=check("CHECK ((qty > 0))")), True),
    ("check-added", "check made stricter", with_(constraints=check("CHECK ((qty > 0))")),
     with_(constraints=check("CHECK ((qty > 10))")), True),
    ("check-added", "check validated", with_(constraints=check("CHECK ((qty > 0)) NOT VALID")),
     with_(constraints=check("CHECK ((qty > 0))")), False),
    ("check-added", "check on a new column only", BASE,
     with_(table(ID, SKU, QTY, X), constraints=check("CHECK ((x <> ''::text))")), False),
    ("exclusion-added", "exclusion constraint added", BASE,
     with_(constraints=constraint("e", "exclusion", "EXCLUDE USING gist (qty WITH =)")), True),
    ("exclusion-added", "exclusion constraint dropped",
     with_(constraints=constraint("e", "exclusion", "EXCLUDE USING gist (qty WITH =)")), BASE, False),
    ("foreign-key-added", "foreign key added", BASE, with_(constraints=fk(FK)), True),
    ("foreign-key-added", "CASCADE replaced by NO ACTION", with_(constraints=fk(FK + " ON DELETE CASCADE")),
     with_(constraints=fk(FK)), True),
    ("foreign-key-added", "replaced by an equivalent one", with_(constraints=fk(FK)),
     with_(constraints=fk(FK + " NOT VALID", "items_sku_fkey")), False),
    ("foreign-key-added", "made ON DELETE CASCADE", with_(constraints=fk(FK)),
     with_(constraints=fk(FK + " ON DELETE CASCADE")), False),
    ("foreign-key-added", "foreign key of a new table", BASE, with_(TAGS, constraints=fk(FK, table="tags")),
     False),
    ("row-security-enabled", "RLS enabled", BASE, RLS, True),
    ("row-security-enabled", "RLS disabled", RLS, BASE, False),
    ("policy-stricter", "restrictive policy added", RLS, policy(permissive=False), True),
    ("policy-stricter", "permissive policy removed", policy(), RLS, True),
    ("policy-stricter", "policy limited to fewer roles", policy(), policy(roles=("app",)), True),
    ("policy-stricter", "permissive policy added", RLS, policy(), False),
    ("policy-stricter", "restrictive policy removed", policy(permissive=False), RLS, False),
    ("policy-stricter", "policy given to more roles", policy(roles=("app",)), policy(), False),
    ("domain-stricter", "domain constraint added", domain(),
     domain(constraints=(*POSINT.constraints, ("small", "CHECK ((VALUE < 100))"))), True),
    ("domain-stricter", "domain made NOT NULL", domain(), domain(not_null=True), True),
    ("domain-stricter", "domain constraint dropped, default set", domain(),
     domain(constraints=(), default="1"), False),
    ("trigger-added", "BEFORE trigger added", BASE, with_(triggers=trigger("BEFORE")), True),
    ("trigger-added", "disabled trigger enabled", with_(triggers=trigger("BEFORE", enabled="disabled")),
     with_(triggers=trigger("BEFORE")), True),
    ("trigger-added", "AFTER trigger added", BASE, with_(triggers=trigger("AFTER")), False),
    ("trigger-added", "BEFORE trigger removed", with_(triggers=trigger("BEFORE")), BASE, False),
    ("trigger-added", "BEFORE trigger of a new table", BASE, with_(TAGS, triggers=trigger("BEFORE", "tags")),
     False),
    ("instead-rule", "INSTEAD rule added", BASE, rule("INSTEAD NOTHING"), True),
    ("instead-rule", "ALSO rule added", BASE, rule("NOTHING"), False),
    ("view-columns-dropped", "view column removed", view(columns=(*VIEW.columns, SKU_TEXT)), view(), True),
    ("view-columns-dropped", "view column added", view(), view(columns=(*VIEW.columns, SKU_TEXT)), False),
    ("view-stricter", "WITH CHECK OPTION", view(), view(options=("check_option=local",)), True),
    ("view-stricter", "security_barrier", view(), view(options=("security_barrier=true",)), False),
    ("partition-moved", "partition detached", partition("1"), BASE, True),
    ("partition-moved", "partition bound changed", partition("1"), partition("2"), True),
    ("partition-moved", "partition attached", BASE, partition("1"), False),
    ("sequence-limit", "MAXVALUE lowered", sequence(), sequence(maximum=100), True),
    ("sequence-limit", "MAXVALUE raised, CYCLE, CACHE", sequence(maximum=100),
     sequence(maximum=1000, cycle=True, cache=20), False),
    ("grant-revoked", "grant revoked", table(grants=("app:INSERT", "app:SELECT")),
     table(grants=("app:SELECT",)), True),
    ("grant-revoked", "default privilege revoked", tax(), tax(grants=("revoked PUBLIC:EXECUTE",)), True),
    ("grant-revoked", "grant added", table(grants=("app:SELECT",)),
     table(grants=("app:INSERT", "app:SELECT")), False),
    ("owner-lost", "given to another role", BASE, table(owner=OTHER_ROLE), True),
    ("owner-lost", "taken back by the current role", table(owner=OTHER_ROLE), BASE, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule_id", "old", "new", "fires"),
    [(rule_id, old, new, fires) for rule_id, _, old, new, fires in CASES],
    ids=[f"{case[0]}: {case[1]}" for case in CASES],
)
def test_rule(rule_id: str, old: Schema, new: Schema, fires: bool) -> None:
    """The rule fires exactly when old code breaks, and a change it marks says why."""
    diff = diff_schemas(old, new)
    assert not diff.empty, "the two schemas must differ"
    fired = [change for change in diff.changes if change.rule and rule_id in change.rule.split(", ")]
    assert bool(fired) is fires, [(c.kind, c.name, c.rule, c.reason) for c in diff.changes]
    for change in diff.changes:
        assert change.breaking == (change.reason is not None) == (change.rule is not None)


def test_every_rule_is_tested_on_both_sides() -> None:
    sides = {(rule_id, fires) for rule_id, _, _, _, fires in CASES}
    missing = [
        (rule.id, fires)
        for rule in BREAKING_RULES
        for fires in (True, False)
        if (rule.id, fires) not in sides
    ]
    assert not missing
    assert {rule_id for rule_id, *_ in CASES} <= set(RULES_BY_ID)
    assert len(RULES_BY_ID) == len(BREAKING_RULES), "rule ids are unique"


#: Changes no rule calls breaking: the "what does not break" half of the table.
SAFE: list[tuple[str, Schema, Schema]] = [
    ("nullable column added", BASE, table(ID, SKU, QTY, X)),
    ("index added", BASE,
     with_(indexes=index("items_qty", "CREATE INDEX items_qty ON public.items USING btree (qty)", False))),
    ("constraint dropped", with_(constraints=check("CHECK ((qty > 0))")), BASE),
    ("unique key dropped", with_(**unique("items_sku_key", "sku")), BASE),
    ("constraint renamed", with_(constraints=check("CHECK ((qty > 0))", "a")),
     with_(constraints=check("CHECK ((qty > 0))", "b"))),
    ("comments", BASE, table(ID, r(SKU, comment="unit"), QTY, comment="stock")),
    ("grant added", BASE, table(grants=("app:SELECT",))),
    ("column default changed", BASE, table(ID, SKU, r(QTY, default="1"))),
    ("collation changed", BASE, table(ID, r(SKU, collation='"C"'), QTY)),
    ("table options", BASE, table(unlogged=True, options=("fillfactor=70",), replica_identity="full")),
    ("sequence increment", sequence(), sequence(increment=10)),
    ("function made STRICT", tax(), tax(body="1.2 $$ STRICT $$")),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), [case[1:] for case in SAFE], ids=[case[0] for case in SAFE])
def test_not_breaking(old: Schema, new: Schema) -> None:
    diff = diff_schemas(old, new)
    assert not diff.empty
    assert not diff.breaking, [(c.kind, c.name, c.rule) for c in diff.breaking]


def test_view_recreated_with_the_same_definition_is_no_change() -> None:
    assert diff_schemas(view(), view(definition=VIEW.definition)).empty


def test_reasons_name_what_breaks() -> None:
    """Reasons are written from the old code's side and name what old code loses."""
    diff = diff_schemas(enum("sad", "ok", "happy"), enum("sad"))
    assert [c.reason for c in diff.changes] == [
        "labels removed ('ok', 'happy'): old code may still write them"
    ]
    renamed = diff_schemas(BASE, table(ID, r(SKU, name="code"), QTY))
    assert [(c.name, c.reason) for c in renamed.breaking] == [
        ("code", "NOT NULL without a default: inserts from old code, which never set it, fail"),
        ("sku", 'old code that reads or writes "sku" fails; rename candidate: "code" (same type '
         "character varying(32))"),
    ]  # fmt: skip
    lowered = diff_schemas(sequence(), sequence(maximum=9))
    assert lowered.changes[0].reason == (
        "MAXVALUE lowered (9223372036854775807 → 9): nextval() may run out under old code"
    )
