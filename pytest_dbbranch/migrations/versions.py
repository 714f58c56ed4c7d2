"""What a database records about its migrations, and what an upgrade would apply."""

from __future__ import annotations

from typing import Any

_VERSION_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attname = 'version_num' AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def version_rows(conn: Any) -> tuple[str, ...]:
    """Revisions recorded in the database (empty when Alembic never ran there). The version
    table is ``alembic_version`` on the search path, or else any table Alembic made (its
    ``version_num`` column): env.py may rename it or put it in another schema."""
    from psycopg import sql

    found = conn.execute("SELECT to_regclass('alembic_version')::text").fetchone()
    if found and found[0]:
        tables = [found[0]]
    else:
        tables = [row[0] for row in conn.execute(_VERSION_TABLES).fetchall()]
    revisions: set[str] = set()
    for table in tables:
        query = sql.SQL("SELECT version_num FROM {}").format(sql.SQL(table))
        revisions.update(row[0] for row in conn.execute(query).fetchall())
    return tuple(sorted(revisions))


#: The name the review checks use.
current_revisions = version_rows


def revisions_since(script: Any, base: tuple[str, ...], target: str) -> list[Any]:
    """Scripts of ``script`` (an Alembic ScriptDirectory) that an upgrade from ``base`` to
    ``target`` applies, in the order it applies them."""
    lower = base if base else "base"
    scripts = list(script.iterate_revisions(target, lower))
    scripts.reverse()
    return [item for item in scripts if item.revision not in base]
