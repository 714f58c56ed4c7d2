"""Which changes break code still running against the old schema: one table of rules.

The question is the expand-and-contract one: can the new schema go out while the previous
release still serves traffic? A rule says yes or no for one kind of change, and when it says
no it says why, from the old code's side. Everything no rule matches is not breaking: a new
nullable column, a widened type, a dropped constraint, a plain index, a comment, a grant.
Where the catalog cannot prove harm (a trigger's body, a check's expression) the reason says
"may". ``docs_breaking_rules.md`` lists the same table for readers; each rule has a test of
both sides in ``tests/unit/test_breaking_rules.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import reasons
from .reasons import Candidate, Check, Context


@dataclass(frozen=True)
class BreakingRule:
    """``check`` returns the reason the change breaks old code, or ``None`` when it does not."""

    id: str
    kinds: tuple[str, ...]
    actions: tuple[str, ...]
    check: Check
    summary: str


def fires(rule: BreakingRule, candidate: Candidate, context: Context) -> str | None:
    if candidate.kind not in rule.kinds or candidate.action not in rule.actions:
        return None
    return rule.check(candidate, context)


def judge(candidate: Candidate, context: Context) -> list[tuple[str, str]]:
    """``(rule id, reason)`` for every rule the change breaks, in table order."""
    found = []
    for rule in BREAKING_RULES:
        reason = fires(rule, candidate, context)
        if reason is not None:
            found.append((rule.id, reason))
    return found


_TYPES = ("enum", "domain", "composite type", "range type")

#: The rules, in the order their reasons are listed when several apply.
BREAKING_RULES: tuple[BreakingRule, ...] = (
    BreakingRule(
        "table-dropped",
        ("table",),
        ("removed",),
        reasons.always("old code that reads or writes the table fails"),
        "a table dropped (or renamed: a drop and an add)",
    ),
    BreakingRule(
        "column-dropped", ("column",), ("removed",), reasons.column_dropped, "a column dropped or renamed"
    ),
    BreakingRule(
        "view-dropped",
        ("view",),
        ("removed",),
        reasons.always("old code that queries it fails"),
        "a view or materialized view dropped or renamed",
    ),
    BreakingRule(
        "function-dropped",
        ("function",),
        ("removed",),
        reasons.always("old code that calls it fails"),
        "a function or procedure dropped or renamed",
    ),
    BreakingRule(
        "function-signature",
        ("function",),
        ("changed",),
        reasons.function_signature,
        "a function's arguments changed",
    ),
    BreakingRule(
        "function-result",
        ("function",),
        ("changed",),
        reasons.function_result,
        "a function's result type or kind changed",
    ),
    BreakingRule(
        "type-dropped",
        _TYPES,
        ("removed",),
        reasons.always("old code that uses the type fails"),
        "an enum, domain, composite or range type dropped",
    ),
    BreakingRule(
        "schema-dropped",
        ("schema",),
        ("removed",),
        reasons.always("old code that names objects in it fails"),
        "a schema dropped",
    ),
    BreakingRule(
        "sequence-dropped",
        ("sequence",),
        ("removed",),
        reasons.sequence_dropped,
        "a sequence dropped (not one that went with its column's identity or default: that column's row "
        "says what it lost)",
    ),
    BreakingRule(
        "extension-dropped",
        ("extension",),
        ("removed",),
        reasons.always("old code that uses its types or functions fails"),
        "an extension dropped",
    ),
    BreakingRule(
        "enum-label-dropped", ("enum",), ("changed",), reasons.labels_dropped, "an enum label removed"
    ),
    BreakingRule(
        "attribute-dropped",
        ("composite type",),
        ("changed",),
        reasons.attributes_lost,
        "a composite type's attribute removed or narrowed",
    ),
    BreakingRule(
        "column-required",
        ("column",),
        ("added",),
        reasons.column_required,
        "a NOT NULL column added without a default",
    ),
    BreakingRule(
        "column-narrowed",
        ("column",),
        ("changed",),
        reasons.type_narrowed,
        "a column type changed other than widened (varchar(32) → varchar(9), bigint → integer, "
        "numeric(10,2) → numeric(8,2), text → varchar(n), timestamp → timestamptz)",
    ),
    BreakingRule(
        "column-not-null", ("column",), ("changed",), reasons.made_not_null, "a column made NOT NULL"
    ),
    BreakingRule(
        "column-default-lost",
        ("column",),
        ("changed",),
        reasons.default_lost,
        "a NOT NULL column lost its default",
    ),
    BreakingRule(
        "column-generated", ("column",), ("changed",), reasons.now_generated, "a column made generated"
    ),
    BreakingRule(
        "column-identity-always",
        ("column",),
        ("changed",),
        reasons.identity_always,
        "a column made GENERATED ALWAYS AS IDENTITY",
    ),
    BreakingRule(
        "unique-added",
        ("constraint", "index"),
        ("added", "changed"),
        reasons.unique_added,
        "a primary key, unique constraint or unique index added on an existing table, or narrowed "
        "(fewer columns, a predicate, NULLS NOT DISTINCT, no longer deferrable)",
    ),
    BreakingRule(
        "check-added",
        ("constraint",),
        ("added", "changed"),
        reasons.check_added,
        "a CHECK added or changed on columns old code writes",
    ),
    BreakingRule(
        "exclusion-added",
        ("constraint",),
        ("added", "changed"),
        reasons.exclusion_added,
        "an exclusion constraint added or changed",
    ),
    BreakingRule(
        "foreign-key-added",
        ("constraint",),
        ("added", "changed"),
        reasons.foreign_key_added,
        "a foreign key added on an existing table, unless an equivalent one was there (same columns and "
        "referenced columns, no stricter MATCH, ON DELETE / ON UPDATE or deferral)",
    ),
    BreakingRule(
        "row-security-enabled",
        ("table",),
        ("changed",),
        reasons.rls_enabled,
        "row-level security enabled or forced",
    ),
    BreakingRule(
        "policy-stricter",
        ("policy",),
        ("added", "changed", "removed"),
        reasons.policy_stricter,
        "a restrictive policy added, a permissive one removed, or a policy changed (with RLS on)",
    ),
    BreakingRule(
        "domain-stricter",
        ("domain",),
        ("changed",),
        reasons.domain_stricter,
        "a domain constraint added or changed, or the domain made NOT NULL",
    ),
    BreakingRule(
        "trigger-added",
        ("trigger",),
        ("added", "changed"),
        reasons.trigger_added,
        "a BEFORE, INSTEAD OF or constraint trigger added, changed or enabled on an existing table",
    ),
    BreakingRule(
        "instead-rule",
        ("rule",),
        ("added", "changed", "removed"),
        reasons.instead_rule,
        "a DO INSTEAD rule added, changed or removed",
    ),
    BreakingRule(
        "view-columns-dropped",
        ("view",),
        ("changed",),
        reasons.view_columns_lost,
        "a view's or materialized view's column removed or narrowed",
    ),
    BreakingRule(
        "extension-moved",
        ("extension",),
        ("changed",),
        reasons.extension_moved,
        "an extension moved to another schema",
    ),
    BreakingRule(
        "view-stricter",
        ("view",),
        ("changed",),
        reasons.view_stricter,
        "a view given WITH CHECK OPTION or security_invoker",
    ),
    BreakingRule(
        "partition-moved",
        ("table",),
        ("changed",),
        reasons.partition_moved,
        "a partition detached or its bound changed",
    ),
    BreakingRule(
        "sequence-limit",
        ("sequence",),
        ("changed",),
        reasons.sequence_limit,
        "a sequence's MAXVALUE lowered (MINVALUE raised for a descending one)",
    ),
    BreakingRule(
        "grant-revoked",
        ("grant",),
        ("added", "changed", "removed"),
        reasons.grants_lost,
        "a privilege revoked (from a role, from PUBLIC, or a default one)",
    ),
    BreakingRule(
        "owner-lost",
        ("owner",),
        ("changed",),
        reasons.owner_lost,
        "an object the current role owned given to another role",
    ),
)

RULES_BY_ID = {rule.id: rule for rule in BREAKING_RULES}
