"""Why a change breaks code still running against the old schema: one function per rule of
``rules.BREAKING_RULES``, each returning the reason, or ``None`` when the change is safe.

Each reads the model objects on both sides of one change (:class:`Candidate`) and, where one
object is not enough, the two schemas (:class:`Context`): the other keys of a table, which
columns are new. Where the catalog cannot prove harm (a trigger's body, a check's expression)
the reason says "may".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .describe import quote_ident, quote_literal
from .equivalence import (
    IndexKey,
    deferral,
    enforced,
    foreign_key,
    identifiers,
    index_key,
    is_widening,
    same_check,
)
from .model import Column, Schema, Table

REJECTS_WRITES = "may reject writes old code makes"


@dataclass(frozen=True)
class Candidate:
    """One difference before it is judged: the model objects on each side (``None`` on the
    side that lacks it) and how the diff shows them."""

    kind: str
    action: str
    name: str
    table: str | None = None
    was: Any = None
    now: Any = None
    before: str | None = None
    after: str | None = None


class Context:
    """Both schemas, for the rules that look beyond one object (other keys of a table, which
    columns are new)."""

    def __init__(self, old: Schema, new: Schema) -> None:
        self.old = old
        self.new = new

    def existed(self, table: str | None) -> bool:
        """The table was there for old code to write to."""
        return table is not None and table in self.old.tables

    def relation_existed(self, relation: str | None) -> bool:
        """The table or view was there for old code to use (views have triggers and rules too)."""
        return self.existed(relation) or (relation is not None and relation in self.old.views)

    def new_columns(self, table: str | None) -> set[str]:
        """Columns this change adds to an existing table: old code never writes them."""
        was, now = self.old.tables.get(table or ""), self.new.tables.get(table or "")
        if now is None:
            return set()
        return {column.name for column in now.columns} - {
            column.name for column in (was.columns if was else ())
        }


Check = Callable[[Candidate, Context], str | None]


# -- removals ---------------------------------------------------------------------------------


def always(reason: str) -> Check:
    """For removals: whatever was removed, old code that used it fails."""
    return lambda candidate, context: reason


def column_dropped(candidate: Candidate, context: Context) -> str:
    column: Column = candidate.was
    reason = f"old code that reads or writes {quote_ident(column.name)} fails"
    table = context.new.tables.get(candidate.table or "")
    added = context.new_columns(candidate.table)
    if table is not None:
        same_type = [quote_ident(c.name) for c in table.columns if c.name in added and c.type == column.type]
        if same_type:
            reason += f"; rename candidate: {' or '.join(same_type)} (same type {column.type})"
    return reason


def sequence_dropped(candidate: Candidate, context: Context) -> str | None:
    """A serial or identity column's sequence goes with its default: the column's row says
    what old code loses (a NOT NULL column without its default)."""
    if candidate.was.owned_by:
        return None
    return "old code that calls nextval() on it fails"


def extension_moved(candidate: Candidate, context: Context) -> str | None:
    was, now = candidate.was, candidate.now
    if was.schema == now.schema:
        return None
    return f"moved from schema {was.schema} to {now.schema}: old code that names its objects there may fail"


def labels_dropped(candidate: Candidate, context: Context) -> str | None:
    dropped = [quote_literal(label) for label in candidate.was.labels if label not in candidate.now.labels]
    return f"labels removed ({', '.join(dropped)}): old code may still write them" if dropped else None


def attributes_lost(candidate: Candidate, context: Context) -> str | None:
    now = {attribute.name: attribute for attribute in candidate.now.attributes}
    lost = [
        quote_ident(attribute.name)
        for attribute in candidate.was.attributes
        if attribute.name not in now or not _same_or_wider(attribute.type, now[attribute.name].type)
    ]
    return (
        f"attributes removed or narrowed ({', '.join(lost)}): old code that uses them fails" if lost else None
    )


def _same_or_wider(was: str, now: str) -> bool:
    return was == now or is_widening(was, now)


# -- columns ------------------------------------------------------------------------------------


def fills_itself(column: Column) -> bool:
    return column.default is not None or column.identity is not None or column.generated is not None


def column_required(candidate: Candidate, context: Context) -> str | None:
    column: Column = candidate.now
    if column.nullable or fills_itself(column):
        return None
    return "NOT NULL without a default: inserts from old code, which never set it, fail"


def type_narrowed(candidate: Candidate, context: Context) -> str | None:
    was, now = candidate.was.type, candidate.now.type
    if was == now or is_widening(was, now):
        return None
    return (
        f"type {was} → {now} is not a known widening: "
        "old code may write or expect values the new type does not hold"
    )


def made_not_null(candidate: Candidate, context: Context) -> str | None:
    return (
        "now NOT NULL: old code may insert NULL"
        if candidate.was.nullable and not candidate.now.nullable
        else None
    )


def default_lost(candidate: Candidate, context: Context) -> str | None:
    was, now = candidate.was, candidate.now
    if now.nullable or not fills_itself(was) or fills_itself(now) or was.nullable:
        return None
    return "lost its default while NOT NULL: inserts from old code that leave it out fail"


def now_generated(candidate: Candidate, context: Context) -> str | None:
    if candidate.now.generated is not None and candidate.was.generated is None:
        return "now generated: old code that writes it fails"
    return None


def identity_always(candidate: Candidate, context: Context) -> str | None:
    was, now = candidate.was, candidate.now
    if now.identity == "always" and was.identity != "always" and now.generated is None:
        return "now GENERATED ALWAYS AS IDENTITY: old code that supplies a value fails"
    return None


# -- keys and constraints -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key: IndexKey
    deferral: int


def _unique_keys(schema: Schema, table: str) -> Iterator[_Key]:
    for name, index in schema.indexes.items():
        if f"{index.schema}.{index.table}" != table or not index.unique:
            continue
        key = index_key(index.definition)
        constraint = schema.constraints.get(name)
        if key is not None:
            yield _Key(key, deferral(constraint.definition) if constraint else 0)


def _new_key(candidate: Candidate, context: Context) -> _Key | None:
    """The unique key a constraint or unique index change brings, if it brings one."""
    now = candidate.now
    if candidate.kind == "index":
        key = index_key(now.definition) if now.unique else None
        return _Key(key, 0) if key else None
    if now.kind not in ("primary key", "unique") or not enforced(now.definition):
        return None
    index = context.new.indexes.get(f"{now.schema}.{now.table}.{now.name}")
    key = index_key(index.definition) if index else None
    return _Key(key, deferral(now.definition)) if key else None


def unique_added(candidate: Candidate, context: Context) -> str | None:
    """A unique key rejects duplicates old code may write, unless a key old code already
    satisfied implies it (the same columns or fewer: a key widened, or renamed, or replaced)."""
    table = candidate.table
    new = _new_key(candidate, context)
    if new is None or not context.existed(table):
        return None
    for old in _unique_keys(context.old, table or ""):
        if old.key.implies(new.key) and new.deferral >= old.deferral:
            return None
    # Old code leaves a new nullable column NULL, and NULLs never collide.
    added = context.new_columns(table)
    columns = (
        {c.name: c for c in context.new.tables[table or ""].columns} if table in context.new.tables else {}
    )
    if not new.key.nulls_not_distinct and any(
        part in added and columns[part].nullable and not fills_itself(columns[part]) for part in new.key.parts
    ):
        return None
    return REJECTS_WRITES


def check_added(candidate: Candidate, context: Context) -> str | None:
    """Whether a changed check is stricter cannot be read off its text, so any new or changed
    check "may" reject writes; one that only reads columns old code never writes cannot."""
    now = candidate.now
    if now.kind != "check" or not enforced(now.definition) or not context.existed(candidate.table):
        return None
    for old in context.old.constraints.values():
        if (old.schema, old.table, old.kind) == (now.schema, now.table, "check") and same_check(
            old.definition, now.definition
        ):
            return None
    if _only_new_columns(now.definition, candidate.table, context):
        return None
    return REJECTS_WRITES


def _only_new_columns(expression: str, table: str | None, context: Context) -> bool:
    """The expression reads only columns this change adds, which old code never writes."""
    current = context.new.tables.get(table or "")
    if current is None:
        return False
    used = identifiers(expression) & {column.name for column in current.columns}
    return bool(used) and used <= context.new_columns(table)


def exclusion_added(candidate: Candidate, context: Context) -> str | None:
    now = candidate.now
    if now.kind != "exclusion" or not context.existed(candidate.table):
        return None
    for old in context.old.constraints.values():
        if (old.schema, old.table, old.definition) == (now.schema, now.table, now.definition):
            return None
    return REJECTS_WRITES


def foreign_key_added(candidate: Candidate, context: Context) -> str | None:
    """A foreign key on a table old code writes checks those writes (and deletes of the rows
    it references). An equivalent one old code already lived with (same columns, same
    referenced table and columns, no stricter) changes nothing, whatever its name."""
    now = candidate.now
    if now.kind != "foreign key" or not enforced(now.definition) or not context.existed(candidate.table):
        return None
    new = foreign_key(now.definition)
    if new is None:
        return REJECTS_WRITES
    for old in context.old.constraints.values():
        if (old.schema, old.table, old.kind) != (now.schema, now.table, "foreign key"):
            continue
        previous = foreign_key(old.definition)
        if previous is not None and enforced(old.definition) and new.at_most_as_strict_as(previous):
            return None
    return REJECTS_WRITES


# -- row-level security, triggers, rules, views -------------------------------------------------


def rls_enabled(candidate: Candidate, context: Context) -> str | None:
    """ "may": the table's owner bypasses row-level security unless it is forced."""
    was: Table = candidate.was
    now: Table = candidate.now
    if now.row_security and not was.row_security:
        return "row-level security enabled: may hide rows from old code and reject its writes"
    if now.row_security and now.force_row_security and not was.force_row_security:
        return "row-level security forced on the owner: may hide rows from old code and reject its writes"
    return None


def policy_stricter(candidate: Candidate, context: Context) -> str | None:
    """Permissive policies are OR-ed (one more lets more rows through), restrictive ones
    AND-ed (one more lets fewer); policies of a table without RLS do nothing."""
    table = context.new.tables.get(candidate.table or "")
    if table is None or not table.row_security or not context.existed(candidate.table):
        return None
    was, now = candidate.was, candidate.now
    if candidate.action == "added":
        return (
            None
            if now.permissive
            else "a restrictive policy: may hide rows from old code or reject its writes"
        )
    if candidate.action == "removed":
        if not was.permissive:
            return None
        return "rows this policy let through are hidden or rejected unless another policy allows them"
    if _looser_policy(was, now):
        return None
    return "policy changed: may hide rows from old code or reject its writes"


def _looser_policy(was: Any, now: Any) -> bool:
    """Same command and expressions; a permissive policy given to more roles, or a restrictive
    one to fewer."""
    same = (was.command, was.permissive, was.using, was.with_check) == (
        now.command,
        now.permissive,
        now.using,
        now.with_check,
    )
    if not same:
        return False
    if now.permissive:
        return "PUBLIC" in now.roles or set(was.roles) <= set(now.roles)
    return "PUBLIC" not in now.roles and set(now.roles) <= set(was.roles)


_TRIGGER_TIMING = re.compile(r"CREATE (CONSTRAINT )?TRIGGER .*? (BEFORE|AFTER|INSTEAD OF) ", re.DOTALL)


def trigger_added(candidate: Candidate, context: Context) -> str | None:
    """BEFORE and INSTEAD OF triggers can refuse or rewrite a write, constraint triggers
    exist to refuse them; plain AFTER triggers (audit, notification) are not flagged."""
    now = candidate.now
    if now.enabled == "disabled" or not context.relation_existed(candidate.table):
        return None
    was = candidate.was
    if was is not None and was.definition == now.definition and was.enabled != "disabled":
        return None
    timing = _TRIGGER_TIMING.match(now.definition)
    if timing is None:
        return REJECTS_WRITES
    if timing.group(1):
        return "a constraint trigger: may reject writes old code makes"
    if timing.group(2) != "AFTER":
        return f"a {timing.group(2)} trigger: may reject or change writes old code makes"
    return None


def instead_rule(candidate: Candidate, context: Context) -> str | None:
    if not context.relation_existed(candidate.table):
        return None
    was, now = candidate.was, candidate.now
    if now is not None and " DO INSTEAD " in now.definition and now.enabled != "disabled":
        return "an INSTEAD rule: may rewrite or swallow writes old code makes"
    if was is not None and " DO INSTEAD " in was.definition and was.enabled != "disabled":
        return "writes this INSTEAD rule rewrote now reach the relation itself, or fail"
    return None


def view_columns_lost(candidate: Candidate, context: Context) -> str | None:
    """A view replaced can keep its name and lose a column old code selects."""
    now = {column.name: column for column in candidate.now.columns}
    lost = [
        quote_ident(column.name)
        for column in candidate.was.columns
        if column.name not in now or not _same_or_wider(column.type, now[column.name].type)
    ]
    return (
        f"columns removed or narrowed ({', '.join(lost)}): old code that reads them fails" if lost else None
    )


def view_stricter(candidate: Candidate, context: Context) -> str | None:
    was, now = set(candidate.was.options), set(candidate.now.options)
    gained = now - was
    if any(option.startswith("check_option=") for option in gained):
        return "WITH CHECK OPTION: writes through the view that it would not show are rejected"
    if "security_invoker=true" in gained:
        return "security_invoker: old code's role now needs privileges on the tables the view reads"
    return None


def partition_moved(candidate: Candidate, context: Context) -> str | None:
    was: Table = candidate.was
    now: Table = candidate.now
    if was.partition_of is None or (was.partition_of, was.partition_bound) == (
        now.partition_of,
        now.partition_bound,
    ):
        return None
    if now.partition_of is None:
        return f"detached from {was.partition_of}: rows old code writes in its range may find no partition"
    return "partition bound changed: rows old code writes may find no partition"


# -- types, functions, sequences, domains ---------------------------------------------------------


def domain_stricter(candidate: Candidate, context: Context) -> str | None:
    """Constraints compare by definition: one renamed, or validated, is no stricter."""
    was, now = candidate.was, candidate.now
    reasons = []
    if now.not_null and not was.not_null:
        reasons.append("now NOT NULL")
    old_checks = {definition for _, definition in was.constraints}
    added = [
        name for name, definition in now.constraints if not any(same_check(o, definition) for o in old_checks)
    ]
    if added:
        reasons.append(f"new constraints ({', '.join(map(quote_ident, added))})")
    return f"{' and '.join(reasons)}: may reject values old code writes" if reasons else None


def function_signature(candidate: Candidate, context: Context) -> str | None:
    if candidate.was.arguments == candidate.now.arguments:
        return None
    return "arguments changed: old code that calls it with the old arguments fails"


def function_result(candidate: Candidate, context: Context) -> str | None:
    was, now = candidate.was, candidate.now
    if was.arguments != now.arguments:
        return None
    reasons = []
    if was.kind != now.kind:
        reasons.append(f"now a {now.kind}: old code that uses it as a {was.kind} fails")
    if was.result != now.result:
        reasons.append(f"returns {now.result or 'nothing'} instead of {was.result or 'nothing'}")
    return "; ".join(reasons) or None


def sequence_limit(candidate: Candidate, context: Context) -> str | None:
    """A lower MAXVALUE (a narrower type lowers it too) is reached sooner."""
    was, now = candidate.was, candidate.now
    if now.increment > 0 and now.maximum < was.maximum:
        return f"MAXVALUE lowered ({was.maximum} → {now.maximum}): nextval() may run out under old code"
    if now.increment < 0 and now.minimum > was.minimum:
        return f"MINVALUE raised ({was.minimum} → {now.minimum}): nextval() may run out under old code"
    return None


# -- privileges -----------------------------------------------------------------------------------


def grants_lost(candidate: Candidate, context: Context) -> str | None:
    """Lost: a grant that is gone, or a default privilege now revoked (``revoked PUBLIC:EXECUTE``)."""
    was = set(candidate.was or ())
    now = set(candidate.now or ())
    lost = sorted(
        {grant for grant in was - now if not grant.startswith("revoked ")}
        | {grant.removeprefix("revoked ") for grant in now - was if grant.startswith("revoked ")}
    )
    if not lost:
        return None
    return f"privileges taken away ({', '.join(lost)}): old code running as those roles may fail"


def owner_lost(candidate: Candidate, context: Context) -> str | None:
    if candidate.before == "current role" and candidate.after != "current role":
        return "another role owns it now: old code running as this role loses the owner's rights"
    return None
