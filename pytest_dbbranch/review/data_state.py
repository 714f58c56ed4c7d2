"""What a branch's rows look like, compact enough to compare before and after a migration.

Per table: the row count and, per column, a hash of its sorted values. Per column rather than
per row, so a column a downgrade re-added at the end (PostgreSQL cannot put it back in
place) compares equal. Left out of the hashes: values a re-run legitimately changes, namely
keys a sequence or identity hands out, values of volatile defaults (``now()``,
``gen_random_uuid()``), dates and times, and foreign keys to any of those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

Mode = Literal["hash", "count", "off"]

_TABLES = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 2, 3
"""
_COLUMNS = """
SELECT a.attrelid, a.attnum, a.attname, a.atttypid::regtype::text,
       a.attidentity <> '' OR a.attgenerated <> '', coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%(tables)s) AND a.attnum > 0 AND NOT a.attisdropped
"""
_FOREIGN_KEYS = """
SELECT conrelid, conkey, confrelid, confkey FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY(%(tables)s)
"""
_VOLATILE = (
    "nextval(",
    "gen_random_uuid(",
    "uuid_generate_",
    "now()",
    "clock_timestamp(",
    "statement_timestamp(",
    "transaction_timestamp(",
    "random(",
    "CURRENT_TIMESTAMP",
    "LOCALTIMESTAMP",
    "CURRENT_DATE",
    "CURRENT_TIME",
)
_TIME_TYPES = ("timestamp", "date", "time", "interval")


@dataclass(frozen=True)
class TableState:
    rows: int
    #: column name -> hash of its values (only the columns a re-run cannot change)
    columns: dict[str, str] = field(default_factory=dict)


def read_state(conn: Any, mode: Mode, exclude: tuple[str, ...] = ()) -> dict[str, TableState]:
    """Row counts (and column hashes, in ``hash`` mode) of every user table but ``exclude``."""
    if mode == "off":
        return {}
    tables = [row for row in conn.execute(_TABLES).fetchall() if row[2] not in exclude]
    oids = [row[0] for row in tables]
    unstable = _unstable_columns(conn, oids) if mode == "hash" else {}
    columns: dict[int, list[str]] = {}
    if mode == "hash":
        for relid, _num, name, _type, _gen, _default in conn.execute(_COLUMNS, {"tables": oids}).fetchall():
            if (relid, name) not in unstable:
                columns.setdefault(relid, []).append(name)
    out: dict[str, TableState] = {}
    for oid, schema, name in tables:
        table = sql.Identifier(schema, name)
        names = sorted(columns.get(oid, []))
        parts = [sql.SQL("count(*)")] + [
            sql.SQL(
                "md5(coalesce(string_agg(coalesce({c}::text, '\\N'), E'\\n' ORDER BY {c}::text), ''))"
            ).format(c=sql.Identifier(column))
            for column in names
        ]
        row = conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(parts), table)).fetchone()
        label = name if schema == "public" else f"{schema}.{name}"
        out[label] = TableState(rows=int(row[0]), columns=dict(zip(names, row[1:], strict=True)))
    return out


def _unstable_columns(conn: Any, oids: list[int]) -> set[tuple[int, str]]:
    by_number: dict[tuple[int, int], str] = {}
    unstable: set[tuple[int, str]] = set()
    for relid, number, name, type_name, generated, default in conn.execute(
        _COLUMNS, {"tables": oids}
    ).fetchall():
        by_number[(relid, number)] = name
        volatile = any(marker.lower() in default.lower() for marker in _VOLATILE)
        if generated or volatile or type_name.startswith(_TIME_TYPES):
            unstable.add((relid, name))
    for relid, keys, target, target_keys in conn.execute(_FOREIGN_KEYS, {"tables": oids}).fetchall():
        if any((target, by_number.get((target, k), "")) in unstable for k in target_keys):
            unstable.update((relid, by_number[(relid, k)]) for k in keys if (relid, k) in by_number)
    return unstable


def compare(
    before: dict[str, TableState], after: dict[str, TableState], labels: tuple[str, str] = ("before", "after")
) -> list[str]:
    """Readable differences between two states, for tables present in both (a table that
    appears or goes is the schema comparison's to report)."""
    lines = []
    for name in sorted(before.keys() & after.keys()):
        was, now = before[name], after[name]
        if was.rows != now.rows:
            lines.append(f"table {name}: {was.rows} rows {labels[0]}, {now.rows} {labels[1]}")
            continue
        changed = sorted(
            c for c in was.columns.keys() & now.columns.keys() if was.columns[c] != now.columns[c]
        )
        if changed:
            lines.append(
                f"table {name}: the values of {', '.join(changed)} differ ({was.rows} rows on both sides)"
            )
    return lines
