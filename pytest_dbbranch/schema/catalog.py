"""Reading a live database's schema into the model, the same way on every server and session.

Equal migrations only give equal models if every text that PostgreSQL renders (defaults,
view bodies, constraint definitions) is rendered under fixed settings: ``search_path``
empty, so every user object comes out schema-qualified, and fixed date, time zone and
quoting settings, so constants print the same for every session.

The settings are changed with ``set_config(..., true)`` inside a transaction or savepoint
that is rolled back, so the caller's session is left as it was and nothing is written: the
reader works in a read-only transaction and on a standby. The queries are in ``queries.py``.
"""

from __future__ import annotations

import collections.abc
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from . import queries
from .model import (
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
    RangeType,
    Rule,
    Schema,
    Sequence,
    Table,
    Trigger,
    View,
    squash,
)

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

_Cursor = psycopg.Cursor[tuple[Any, ...]]


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
        namespaces = {
            name: Namespace(name, comment, owner, tuple(grants))
            for name, comment, owner, grants in cur.execute(
                queries.SCHEMAS, {"system": queries.SYSTEM_SCHEMAS, "wanted": wanted}
            )
        }
        params = {"schemas": sorted(namespaces)}
        columns, view_columns = _columns(cur, params)
        return Schema(
            schemas=namespaces,
            extensions={
                name: Extension(name, version, schema, comment)
                for name, version, schema, comment in cur.execute(queries.EXTENSIONS, params)
            },
            tables=_tables(cur, params, columns),
            indexes={
                f"{schema}.{table}.{name}": Index(schema, table, name, *values)
                for schema, table, name, *values in cur.execute(queries.INDEXES, params)
            },
            constraints={
                f"{schema}.{table}.{name}": Constraint(schema, table, name, *values)
                for schema, table, name, *values in cur.execute(queries.CONSTRAINTS, params)
            },
            triggers={
                f"{schema}.{table}.{name}": Trigger(schema, table, name, *values)
                for schema, table, name, *values in cur.execute(queries.TRIGGERS, params)
            },
            policies={
                f"{schema}.{table}.{name}": Policy(
                    schema, table, name, command, permissive, tuple(roles), *values
                )
                for schema, table, name, command, permissive, roles, *values in cur.execute(
                    queries.POLICIES, params
                )
            },
            rules={
                f"{schema}.{table}.{name}": Rule(schema, table, name, *values)
                for schema, table, name, *values in cur.execute(queries.RULES, params)
            },
            views={
                f"{schema}.{name}": View(
                    schema,
                    name,
                    squash(definition),
                    materialized,
                    tuple(options),
                    tuple(view_columns.get(f"{schema}.{name}", _ViewColumns()).columns),
                    tuple(sorted(view_columns.get(f"{schema}.{name}", _ViewColumns()).comments)),
                    comment,
                    owner,
                    tuple(grants),
                )
                for schema, name, definition, materialized, options, comment, owner, grants in cur.execute(
                    queries.VIEWS, params
                )
            },
            functions={
                f"{schema}.{name}({arguments})": Function(
                    schema, name, arguments, result, kind, definition.strip(), comment, owner, tuple(grants)
                )
                for schema, name, arguments, result, kind, definition, comment, owner, grants in cur.execute(
                    queries.FUNCTIONS, params
                )
            },
            sequences=_sequences(cur, params),
            enums={
                f"{schema}.{name}": EnumType(schema, name, tuple(labels), comment, owner, tuple(grants))
                for schema, name, labels, comment, owner, grants in cur.execute(queries.ENUMS, params)
            },
            domains={
                f"{schema}.{name}": Domain(
                    schema,
                    name,
                    base,
                    not_null,
                    default,
                    collation,
                    tuple((pair[0], pair[1]) for pair in checks),
                    comment,
                    owner,
                    tuple(grants),
                )
                for schema, name, base, not_null, default, collation, checks, comment, owner, grants in (
                    cur.execute(queries.DOMAINS, params)
                )
            },
            composites={
                f"{schema}.{name}": CompositeType(
                    schema,
                    name,
                    tuple(Attribute(*item) for item in attributes),
                    comment,
                    owner,
                    tuple(grants),
                )
                for schema, name, attributes, comment, owner, grants in cur.execute(
                    queries.COMPOSITES, params
                )
            },
            ranges={
                f"{schema}.{name}": RangeType(schema, name, definition, comment, owner, tuple(grants))
                for schema, name, definition, comment, owner, grants in cur.execute(queries.RANGES, params)
            },
        )


class _ViewColumns:
    """A view's columns and the comments on them."""

    def __init__(self) -> None:
        self.columns: list[Attribute] = []
        self.comments: list[tuple[str, str]] = []


def _columns(cur: _Cursor, params: dict[str, Any]) -> tuple[dict[str, list[Column]], dict[str, _ViewColumns]]:
    """Table columns by table, and view columns by view."""
    columns: dict[str, list[Column]] = {}
    views: dict[str, _ViewColumns] = {}
    for schema, table, is_view, name, *values in cur.execute(queries.COLUMNS, params):
        type_, nullable, default, identity, generated, collation, options, comment, grants = values
        key = f"{schema}.{table}"
        if is_view:
            view = views.setdefault(key, _ViewColumns())
            view.columns.append(Attribute(name, type_, collation))
            if comment is not None:
                view.comments.append((name, comment))
            continue
        columns.setdefault(key, []).append(
            Column(
                name,
                type_,
                nullable,
                default,
                identity,
                generated,
                collation,
                tuple(options),
                comment,
                tuple(grants),
            )
        )
    return columns, views


def _tables(cur: _Cursor, params: dict[str, Any], columns: dict[str, list[Column]]) -> dict[str, Table]:
    tables = {}
    for schema, name, key, parent, bound, inherits, unlogged, options, *rest in cur.execute(
        queries.TABLES, params
    ):
        method, replica, rls, force_rls, comment, owner, grants = rest
        tables[f"{schema}.{name}"] = Table(
            schema,
            name,
            tuple(columns.get(f"{schema}.{name}", ())),
            partition_key=key,
            partition_of=parent,
            partition_bound=bound,
            inherits=tuple(inherits),
            unlogged=unlogged,
            options=tuple(options),
            access_method=method,
            replica_identity=replica,
            row_security=rls,
            force_row_security=force_rls,
            comment=comment,
            owner=owner,
            grants=tuple(grants),
        )
    return tables


def _sequences(cur: _Cursor, params: dict[str, Any]) -> dict[str, Sequence]:
    sequences = {}
    for schema, name, data_type, start, increment, owner_schema, owner, column, *rest in cur.execute(
        queries.SEQUENCES, params
    ):
        minimum, maximum, cache, cycle, unlogged, comment, role, grants = rest
        owned_by = None
        if owner is not None:
            owned_by = f"{owner}.{column}" if owner_schema == schema else f"{owner_schema}.{owner}.{column}"
        sequences[f"{schema}.{name}"] = Sequence(
            schema,
            name,
            data_type,
            start,
            increment,
            owned_by,
            minimum,
            maximum,
            cache,
            cycle,
            unlogged,
            comment,
            role,
            tuple(grants),
        )
    return sequences
