"""The catalog queries behind :func:`~pytest_dbbranch.schema.catalog.read_schema`.

Each returns plain texts and flags keyed by schema-qualified names, never OIDs. They run with
``search_path`` empty (see ``catalog.py``), so every user object comes out schema-qualified,
and every one reads only catalogs and functions open to any role that can connect.

Roles are rendered by :func:`_role` (``PUBLIC``, ``current role`` for the reading role, else
the quoted role name), owners by :func:`_owner` (``current role`` or ``other role``), and
privileges by :func:`_grants` as the difference from PostgreSQL's default for the object
(``role:PRIVILEGE`` granted beyond it, ``revoked role:PRIVILEGE`` taken from it): a grant
later revoked leaves an explicit ACL equal to the default, which must read as no change.
"""

from __future__ import annotations

SYSTEM_SCHEMAS = ["pg_catalog", "information_schema"]

# Objects created by CREATE EXTENSION are the extension's business, not the migrations'.
_NOT_FROM_EXTENSION = """
NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend e
    WHERE e.classid = '{catalog}'::pg_catalog.regclass AND e.objid = {oid} AND e.deptype = 'e'
)
"""


def _not_from_extension(catalog: str, oid: str) -> str:
    return _NOT_FROM_EXTENSION.format(catalog=catalog, oid=oid)


def _role(oid: str) -> str:
    return (
        f"CASE WHEN {oid} = 0 THEN 'PUBLIC'"
        f" WHEN pg_catalog.pg_get_userbyid({oid}) = CURRENT_USER THEN 'current role'"
        f" ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid({oid})::text) END"
    )


def _owner(oid: str) -> str:
    """``public`` belongs to ``pg_database_owner`` since PostgreSQL 15: that is the reading
    role when it owns the database."""
    return (
        f"CASE WHEN pg_catalog.pg_get_userbyid({oid}) = CURRENT_USER"
        f" OR (pg_catalog.pg_get_userbyid({oid}) = 'pg_database_owner' AND EXISTS ("
        "   SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()"
        "   AND pg_catalog.pg_get_userbyid(d.datdba) = CURRENT_USER))"
        " THEN 'current role' ELSE 'other role' END"
    )


def _grants(acl: str, kind: str, owner: str) -> str:
    default = f"pg_catalog.acldefault('{kind}', {owner})"
    actual = f"coalesce({acl}, {default})"

    def items(array: str) -> str:
        return f"SELECT grantee, privilege_type, is_grantable FROM pg_catalog.aclexplode({array})"

    text = (
        f"{_role('g.grantee')} || ':' || g.privilege_type"
        " || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END"
    )
    return (
        f"ARRAY(SELECT {text} FROM ({items(actual)} EXCEPT {items(default)}) g"
        f" UNION ALL SELECT 'revoked ' || {text} FROM ({items(default)} EXCEPT {items(actual)}) g"
        " ORDER BY 1)"
    )


def _collation(collation: str, default: str) -> str:
    """The collation's name when it is not the type's own, schema-qualified outside pg_catalog."""
    return f"""
       (SELECT CASE WHEN cn.nspname = 'pg_catalog' THEN pg_catalog.quote_ident(co.collname)
                    ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname)
               END
        FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
        WHERE co.oid = {collation} AND {collation} <> {default})"""


def _qualified(relation: str) -> str:
    return f"""
       (SELECT pn.nspname || '.' || pc.relname FROM pg_catalog.pg_class pc
        JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace WHERE pc.oid = {relation})"""


SCHEMAS = f"""
SELECT n.nspname, pg_catalog.obj_description(n.oid, 'pg_namespace'), {_owner("n.nspowner")},
       {_grants("n.nspacl", "n", "n.nspowner")}
FROM pg_catalog.pg_namespace n
WHERE n.nspname <> ALL (%(system)s)
  AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'
  AND (%(wanted)s::text[] IS NULL OR n.nspname = ANY (%(wanted)s::text[]))
  AND {_not_from_extension("pg_catalog.pg_namespace", "n.oid")}
"""

EXTENSIONS = """
SELECT x.extname, x.extversion, n.nspname, pg_catalog.obj_description(x.oid, 'pg_extension')
FROM pg_catalog.pg_extension x JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace
WHERE n.nspname = ANY (%(schemas)s)
"""

TABLES = f"""
SELECT n.nspname, c.relname,
       CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN {_qualified("i.inhparent")} END,
       CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
       ARRAY(SELECT {_qualified("p.inhparent")} FROM pg_catalog.pg_inherits p
             WHERE p.inhrelid = c.oid AND NOT c.relispartition ORDER BY p.inhseqno),
       c.relpersistence = 'u',
       ARRAY(SELECT o FROM pg_catalog.unnest(c.reloptions) o ORDER BY o),
       coalesce(am.amname, 'heap'),
       CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'n' THEN 'nothing' WHEN 'f' THEN 'full'
           ELSE 'index ' || coalesce((SELECT ic.relname FROM pg_catalog.pg_index x
                                      JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
                                      WHERE x.indrelid = c.oid AND x.indisreplident), '?') END,
       c.relrowsecurity, c.relforcerowsecurity,
       pg_catalog.obj_description(c.oid, 'pg_class'), {_owner("c.relowner")},
       {_grants("c.relacl", "r", "c.relowner")}
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
LEFT JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid AND c.relispartition
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

# Columns of tables, and of views for their comments (view columns have no other state the
# model keeps: their types follow from the definition). Of the per-column options only the
# planner's n_distinct ones are PostgreSQL's own; a patched server may add others.
COLUMNS = f"""
SELECT n.nspname, c.relname, c.relkind IN ('v', 'm'), a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       NOT a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
       CASE a.attgenerated
           WHEN 's' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid)
           WHEN 'v' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) || ' VIRTUAL'
       END,
       {_collation("a.attcollation", "t.typcollation")},
       ARRAY(SELECT o FROM pg_catalog.unnest(ARRAY[
                 CASE WHEN a.attstorage <> t.typstorage THEN 'STORAGE ' || CASE a.attstorage
                      WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN'
                      ELSE 'EXTENDED' END END,
                 CASE a.attcompression WHEN 'p' THEN 'COMPRESSION pglz' WHEN 'l' THEN 'COMPRESSION lz4' END,
                 CASE WHEN a.attstattarget >= 0 THEN 'STATISTICS ' || a.attstattarget END]
                 || ARRAY(SELECT x FROM pg_catalog.unnest(a.attoptions) x WHERE left(x, 10) = 'n_distinct')) o
             WHERE o IS NOT NULL),
       pg_catalog.col_description(c.oid, a.attnum),
       {_grants("a.attacl", "c", "c.relowner")}
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = ANY (%(schemas)s)
ORDER BY n.nspname, c.relname, a.attnum
"""

INDEXES = f"""
SELECT n.nspname, t.relname, i.relname, pg_catalog.pg_get_indexdef(x.indexrelid), x.indisunique,
       x.indisprimary, x.indisclustered, pg_catalog.obj_description(i.oid, 'pg_class')
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
CONSTRAINTS = f"""
SELECT n.nspname, t.relname, con.conname,
       CASE con.contype WHEN 'p' THEN 'primary key' WHEN 'f' THEN 'foreign key' WHEN 'u' THEN 'unique'
                        WHEN 'c' THEN 'check' WHEN 'x' THEN 'exclusion' END,
       pg_catalog.pg_get_constraintdef(con.oid), pg_catalog.obj_description(con.oid, 'pg_constraint')
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

_ENABLED = (
    "CASE {0} WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica' ELSE 'always' END"
)

# Internal triggers implement foreign keys; a partition's clone of its parent's trigger
# (tgparentid) is the parent's, which the dump also shows once.
TRIGGERS = f"""
SELECT n.nspname, c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid, false),
       {_ENABLED.format("t.tgenabled")}, pg_catalog.obj_description(t.oid, 'pg_trigger')
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

POLICIES = f"""
SELECT n.nspname, c.relname, p.polname,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
       p.polpermissive,
       ARRAY(SELECT {_role("r.oid")} FROM pg_catalog.unnest(p.polroles) r(oid) ORDER BY 1),
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       pg_catalog.obj_description(p.oid, 'pg_policy')
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

RULES = f"""
SELECT n.nspname, c.relname, r.rulename, pg_catalog.pg_get_ruledef(r.oid, false),
       {_ENABLED.format("r.ev_enabled")}, pg_catalog.obj_description(r.oid, 'pg_rewrite')
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

VIEWS = f"""
SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid, true), c.relkind = 'm',
       ARRAY(SELECT o FROM pg_catalog.unnest(c.reloptions) o ORDER BY o),
       pg_catalog.obj_description(c.oid, 'pg_class'), {_owner("c.relowner")},
       {_grants("c.relacl", "r", "c.relowner")}
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_class", "c.oid")}
"""

# A range type's constructor functions depend on it internally ('i'): they are the type's.
FUNCTIONS = f"""
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
       ELSE pg_catalog.pg_get_functiondef(p.oid) END,
       pg_catalog.obj_description(p.oid, 'pg_proc'), {_owner("p.proowner")},
       {_grants("p.proacl", "f", "p.proowner")}
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid
WHERE n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_proc", "p.oid")}
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend i
      WHERE i.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND i.objid = p.oid AND i.deptype = 'i'
  )
"""

# Serial columns own their sequence with an 'a' dependency, identity columns with an 'i' one.
SEQUENCES = f"""
SELECT n.nspname, c.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       tn.nspname, t.relname, ta.attname, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       c.relpersistence = 'u', pg_catalog.obj_description(c.oid, 'pg_class'), {_owner("c.relowner")},
       {_grants("c.relacl", "s", "c.relowner")}
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

_TYPE_COMMON = f"""pg_catalog.obj_description(t.oid, 'pg_type'), {_owner("t.typowner")},
       {_grants("t.typacl", "T", "t.typowner")}"""

_TYPE_FILTER = f"""n.nspname = ANY (%(schemas)s)
  AND {_not_from_extension("pg_catalog.pg_type", "t.oid")}"""

ENUMS = f"""
SELECT n.nspname, t.typname,
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
             WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       {_TYPE_COMMON}
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype = 'e' AND {_TYPE_FILTER}
"""

DOMAINS = f"""
SELECT n.nspname, t.typname, pg_catalog.format_type(t.typbasetype, t.typtypmod), t.typnotnull,
       pg_catalog.pg_get_expr(t.typdefaultbin, 0),
       {_collation("t.typcollation", "b.typcollation")},
       ARRAY(SELECT ARRAY[con.conname::text, pg_catalog.pg_get_constraintdef(con.oid)]
             FROM pg_catalog.pg_constraint con
             WHERE con.contypid = t.oid AND con.contype = 'c' ORDER BY con.conname),
       {_TYPE_COMMON}
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
WHERE t.typtype = 'd' AND {_TYPE_FILTER}
"""

COMPOSITES = f"""
SELECT n.nspname, t.typname,
       ARRAY(SELECT ARRAY[a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
                          {_collation("a.attcollation", "at.typcollation")}]
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type at ON at.oid = a.atttypid
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       {_TYPE_COMMON}
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
WHERE t.typtype = 'c' AND c.relkind = 'c' AND {_TYPE_FILTER}
"""

RANGES = f"""
SELECT n.nspname, t.typname,
       concat_ws(', ',
           'SUBTYPE = ' || pg_catalog.format_type(r.rngsubtype, NULL),
           'SUBTYPE_OPCLASS = ' || (SELECT pg_catalog.quote_ident(opn.nspname) || '.'
                                           || pg_catalog.quote_ident(op.opcname)
                                    FROM pg_catalog.pg_opclass op
                                    JOIN pg_catalog.pg_namespace opn ON opn.oid = op.opcnamespace
                                    WHERE op.oid = r.rngsubopc),
           'COLLATION = ' || {_collation("r.rngcollation", "0")},
           CASE WHEN r.rngcanonical <> 0 THEN 'CANONICAL = ' || r.rngcanonical::pg_catalog.regproc::text END,
           CASE WHEN r.rngsubdiff <> 0 THEN 'SUBTYPE_DIFF = ' || r.rngsubdiff::pg_catalog.regproc::text END,
           'MULTIRANGE_TYPE_NAME = ' || pg_catalog.format_type(r.rngmultitypid, NULL)),
       {_TYPE_COMMON}
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
WHERE t.typtype = 'r' AND {_TYPE_FILTER}
"""
