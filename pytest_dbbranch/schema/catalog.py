"""Reading a live database's schema into the model, the same way on every server and session.

Equal migrations only give equal models if every text that PostgreSQL renders (defaults,
view bodies, constraint definitions) is rendered under fixed settings: ``search_path``
empty, so every user object comes out schema-qualified, and fixed date, time zone and
quoting settings, so constants print the same for every session.

The settings are changed with ``set_config(..., true)`` inside a transaction or savepoint
that is rolled back, so the caller's session is left as it was and nothing is written: the
reader works in a read-only transaction and on a standby.
"""

from __future__ import annotations

import collections.abc
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .model import Column, Constraint, EnumType, Function, Index, Schema, Sequence, Table, View, squash

_SYSTEM_SCHEMAS = ["pg_catalog", "information_schema"]

# Settings that change how PostgreSQL prints expressions and constants. Each is settable by
# any role, and each is applied only for the duration of the read.
_STABLE_SETTINGS = (
    ("search_path", ""),
    ("quote_all_identifiers", "off"),
    ("standard_conforming_strings", "on"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)


# Objects created by CREATE EXTENSION are the extension's business, not the migrations'.
_NOT_FROM_EXTENSION = """
NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend e
    WHERE e.classid = '{catalog}'::pg_catalog.regclass AND e.objid = {oid} AND e.deptype = 'e'
)
"""


def _not_from_extension(catalog: str, oid: str) -> str:
    return _NOT_FROM_EXTENSION.format(catalog=catalog, oid=oid)


_SCHEMAS_QUERY = """
SELECT n.nspname FROM pg_catalog.pg_namespace n
WHERE n.nspname <> ALL (%(system)s)
  AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'
  AND (%(wanted)s::text[] IS NULL OR n.nspname = ANY (%(wanted)s::text[]))
"""

_TABLES = f"""
SELECT n.nspname, c.relname, c.relkind = 'p', pg_catalog.obj_description(c.oid, 'pg_class')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

_COLUMNS = """
SELECT n.nspname, c.relname, a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       NOT a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
       CASE a.attgenerated
           WHEN 's' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid)
           WHEN 'v' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) || ' VIRTUAL'
       END,
       CASE WHEN a.attcollation <> t.typcollation THEN
           CASE WHEN cn.nspname = 'pg_catalog' THEN pg_catalog.quote_ident(co.collname)
                ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname)
           END
       END
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p') AND n.nspname = ANY (%(schemas)s)
ORDER BY n.nspname, c.relname, a.attnum
"""

_INDEXES = f"""
SELECT n.nspname, t.relname, i.relname, pg_catalog.pg_get_indexdef(x.indexrelid), x.indisunique,
       x.indisprimary
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p', 'm') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "t.oid")}
"""

# contype 'n' (NOT NULL, in pg_constraint since PostgreSQL 18) is left out: nullability is on
# the column already, and keeping it would make 15 and 18 disagree. A foreign key that points
# at a partitioned table also gets one internal copy per referenced partition, under the same
# name on the same table; only the parent is kept.
_CONSTRAINTS = f"""
SELECT n.nspname, t.relname, con.conname,
       CASE con.contype WHEN 'p' THEN 'primary key' WHEN 'f' THEN 'foreign key' WHEN 'u' THEN 'unique'
                        WHEN 'c' THEN 'check' WHEN 'x' THEN 'exclusion' END,
       pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class t ON t.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE con.contype IN ('p', 'f', 'u', 'c', 'x')
  AND t.relkind IN ('r', 'p') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "t.oid")}
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_constraint parent
      WHERE parent.oid = con.conparentid AND parent.conrelid = con.conrelid
  )
"""

_VIEWS = f"""
SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid, true), c.relkind = 'm'
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

_FUNCTIONS = f"""
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       coalesce(pg_catalog.pg_get_function_result(p.oid), ''),
       CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                      WHEN 'w' THEN 'window' END,
       CASE WHEN p.prokind = 'a' THEN
           concat_ws(', ',
               'SFUNC = ' || a.aggtransfn::pg_catalog.regprocedure::text,
               'STYPE = ' || pg_catalog.format_type(a.aggtranstype, NULL),
               CASE WHEN a.aggfinalfn <> 0
                    THEN 'FINALFUNC = ' || a.aggfinalfn::pg_catalog.regprocedure::text END,
               CASE WHEN a.aggcombinefn <> 0
                    THEN 'COMBINEFUNC = ' || a.aggcombinefn::pg_catalog.regprocedure::text END,
               'INITCOND = ' || pg_catalog.quote_literal(a.agginitval),
               CASE WHEN a.aggsortop <> 0 THEN 'SORTOP = ' || a.aggsortop::pg_catalog.regoperator::text END,
               CASE WHEN a.aggkind <> 'n' THEN 'KIND = ' || a.aggkind::text END)
       ELSE pg_catalog.pg_get_functiondef(p.oid) END
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid
WHERE n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_proc", "p.oid")}
"""

# Serial columns own their sequence with an 'a' dependency, identity columns with an 'i' one.
_SEQUENCES = f"""
SELECT n.nspname, c.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       tn.nspname, t.relname, ta.attname
FROM pg_catalog.pg_sequence s
JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_depend d
       ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0
      AND d.deptype IN ('a', 'i')
LEFT JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_catalog.pg_attribute ta ON ta.attrelid = d.refobjid AND ta.attnum = d.refobjsubid
WHERE n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

_ENUMS = f"""
SELECT n.nspname, t.typname,
       coalesce(array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                FILTER (WHERE e.enumlabel IS NOT NULL), '{{}}')
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid
WHERE t.typtype = 'e' AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_type", "t.oid")}
GROUP BY n.nspname, t.typname
"""


def read_schema(
    conn: psycopg.Connection[Any], *, schemas: collections.abc.Sequence[str] | None = None
) -> Schema:
    """Read the schema visible through ``conn``; only reads, and leaves the session as it was.

    ``schemas`` limits the read to those schemas; by default every schema except the system
    ones (``pg_catalog``, ``information_schema``, TOAST and temporary schemas).
    """
    wanted = None if schemas is None else list(schemas)
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=tuple_row) as cur:
        for name, value in _STABLE_SETTINGS:
            cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
        cur.execute(_SCHEMAS_QUERY, {"system": _SYSTEM_SCHEMAS, "wanted": wanted})
        params = {"schemas": [row[0] for row in cur.fetchall()]}

        columns: dict[str, list[Column]] = {}
        for schema, table, *values in cur.execute(_COLUMNS, params):
            name, type_, nullable, default, identity, generated, collation = values
            columns.setdefault(f"{schema}.{table}", []).append(
                Column(name, type_, nullable, default, identity, generated, collation)
            )
        tables = {
            f"{schema}.{name}": Table(
                schema, name, tuple(columns.get(f"{schema}.{name}", ())), partitioned, comment
            )
            for schema, name, partitioned, comment in cur.execute(_TABLES, params)
        }
        indexes = {
            f"{schema}.{table}.{name}": Index(schema, table, name, definition, unique, primary)
            for schema, table, name, definition, unique, primary in cur.execute(_INDEXES, params)
        }
        constraints = {
            f"{schema}.{table}.{name}": Constraint(schema, table, name, kind, definition)
            for schema, table, name, kind, definition in cur.execute(_CONSTRAINTS, params)
        }
        views = {
            f"{schema}.{name}": View(schema, name, squash(definition), materialized)
            for schema, name, definition, materialized in cur.execute(_VIEWS, params)
        }
        functions = {
            f"{schema}.{name}({arguments})": Function(
                schema, name, arguments, result, kind, definition.strip()
            )
            for schema, name, arguments, result, kind, definition in cur.execute(_FUNCTIONS, params)
        }
        sequences = {}
        for schema, name, data_type, start, increment, owner_schema, owner, column in cur.execute(
            _SEQUENCES, params
        ):
            owned_by = None
            if owner is not None:
                owned_by = (
                    f"{owner}.{column}" if owner_schema == schema else f"{owner_schema}.{owner}.{column}"
                )
            sequences[f"{schema}.{name}"] = Sequence(schema, name, data_type, start, increment, owned_by)
        enums = {
            f"{schema}.{name}": EnumType(schema, name, tuple(labels))
            for schema, name, labels in cur.execute(_ENUMS, params)
        }
    return Schema(
        tables=tables,
        indexes=indexes,
        constraints=constraints,
        views=views,
        functions=functions,
        sequences=sequences,
        enums=enums,
    )
