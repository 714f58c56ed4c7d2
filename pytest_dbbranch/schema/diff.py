"""What a migration changes, and which of those changes break code that is still running.

The question a reviewer asks of a pull request's migrations is not "what differs" but "can
the new schema go out while the old application is still serving traffic" (the expand and
contract way of shipping). So every change carries ``breaking`` and a ``reason`` written from
the old code's side: a removed column breaks the queries that name it, a new NOT NULL column
without a default breaks the inserts that do not know about it, a new unique constraint may
reject rows the old code still writes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from .describe import (
    describe_constraint,
    describe_enum,
    describe_index,
    describe_sequence,
    describe_table,
    describe_table_options,
    describe_view,
    function_key,
    quote_ident,
    quote_literal,
    signature,
)
from .equivalence import is_widening, same_view
from .model import Column, Function, Schema, Table, owner_table, squash

KINDS = ("table", "column", "index", "constraint", "view", "function", "sequence", "enum")
ACTIONS = ("removed", "changed", "added")

_REJECTS_WRITES = "may reject writes old code makes"
_ON_CONFLICT = "old code whose INSERT … ON CONFLICT relies on it fails"
#: Constraint kinds that can turn a write old code makes into an error.
_RESTRICTING = ("primary key", "unique", "check", "foreign key", "exclusion")
#: Constraint kinds an ON CONFLICT clause can infer as its arbiter.
_ARBITERS = ("primary key", "unique", "exclusion")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Change:
    kind: str
    action: str
    table: str | None
    name: str
    before: str | None
    after: str | None
    breaking: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class SchemaDiff:
    changes: tuple[Change, ...] = ()

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.breaking)

    @property
    def empty(self) -> bool:
        return not self.changes

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": {"changes": len(self.changes), "breaking": len(self.breaking)},
            "changes": [asdict(change) for change in self.changes],
        }


def diff_schemas(old: Schema, new: Schema, *, exclude: Collection[str] = ("alembic_version",)) -> SchemaDiff:
    """``exclude`` defaults to Alembic's bookkeeping table: it exists on one side only while a
    database has never been stamped, which says nothing about the application's schema."""
    old, new = old.without(exclude), new.without(exclude)
    context = _Context(old, new)
    changes = [
        *_tables(context),
        *_indexes(context),
        *_constraints(context),
        *_views(context),
        *_functions(context),
        *_sequences(context),
        *_enums(context),
    ]
    return SchemaDiff(tuple(sorted(changes, key=_order)))


def _order(change: Change) -> tuple[Any, ...]:
    """A total order, so a re-posted comment changes only when the schema does."""
    return (
        change.table is None,
        change.table or "",
        KINDS.index(change.kind),
        change.name,
        ACTIONS.index(change.action),
        change.before or "",
        change.after or "",
    )


class _Context:
    """Both sides plus what the per-kind comparisons share: tables that came or went."""

    def __init__(self, old: Schema, new: Schema) -> None:
        self.old = old
        self.new = new
        self.added_tables = set(new.tables) - set(old.tables)
        self.removed_tables = set(old.tables) - set(new.tables)
        self.schemas = {"pg_catalog"} | {
            item.schema
            for side in (old, new)
            for section in (side.tables, side.views, side.functions, side.sequences, side.enums)
            for item in section.values()
        }

    def has_column(self, table: str | None, column: str, side: Schema) -> bool:
        found = side.tables.get(table or "")
        return found is not None and found.column(column) is not None

    def is_view(self, relation: str) -> bool:
        return relation in self.old.views or relation in self.new.views


def _pairs(old: Mapping[str, _T], new: Mapping[str, _T]) -> Iterator[tuple[str, _T | None, _T | None]]:
    """Every name on either side with its old and new value, ``None`` on the side that lacks it:
    the one walk each kind of object needs to tell removed, added and changed apart."""
    for key in sorted(set(old) | set(new)):
        yield key, old.get(key), new.get(key)


def _change(
    kind: str,
    action: str,
    name: str,
    *,
    table: str | None = None,
    before: str | None = None,
    after: str | None = None,
    reason: str | None = None,
) -> Change:
    """``breaking`` follows from ``reason``: a change that breaks old code always says why."""
    return Change(
        kind=kind,
        action=action,
        table=table,
        name=name,
        before=before,
        after=after,
        breaking=reason is not None,
        reason=reason,
    )


# -- tables and columns ----------------------------------------------------------------------


def _tables(context: _Context) -> Iterator[Change]:
    for key, was, now in _pairs(context.old.tables, context.new.tables):
        if now is None and was is not None:
            yield _change(
                "table",
                "removed",
                key,
                table=key,
                before=describe_table(was),
                reason="old code that reads or writes the table fails",
            )
        elif was is None and now is not None:
            yield _change("table", "added", key, table=key, after=describe_table(now))
        elif was is not None and now is not None:
            if (was.partitioned, was.comment) != (now.partitioned, now.comment):
                yield _change(
                    "table",
                    "changed",
                    key,
                    table=key,
                    before=describe_table_options(was),
                    after=describe_table_options(now),
                )
            yield from _columns(key, was, now)


def _columns(table: str, before: Table, after: Table) -> Iterator[Change]:
    old = {column.name: column for column in before.columns}
    new = {column.name: column for column in after.columns}
    added = [column for column in after.columns if column.name not in old]
    for column in before.columns:
        if column.name in new:
            continue
        reason = f"old code that reads or writes {quote_ident(column.name)} fails"
        candidates = [quote_ident(other.name) for other in added if other.type == column.type]
        if candidates:
            reason += f"; rename candidate: {' or '.join(candidates)} (same type {column.type})"
        yield _change("column", "removed", column.name, table=table, before=column.describe(), reason=reason)
    for column in added:
        needs_value = not column.nullable and not _fills_itself(column)
        yield _change(
            "column",
            "added",
            column.name,
            table=table,
            after=column.describe(),
            reason="NOT NULL without a default: inserts from old code, which never set it, fail"
            if needs_value
            else None,
        )
    for name, was in old.items():
        now = new.get(name)
        if now is None or now == was:
            continue
        yield _change(
            "column",
            "changed",
            name,
            table=table,
            before=was.describe(),
            after=now.describe(),
            reason="; ".join(_column_reasons(was, now)) or None,
        )


def _fills_itself(column: Column) -> bool:
    return column.default is not None or column.identity is not None or column.generated is not None


def _column_reasons(was: Column, now: Column) -> Iterator[str]:
    if was.type != now.type and not is_widening(was.type, now.type):
        yield (
            f"type {was.type} → {now.type} is not a known widening: "
            "old code may write or expect values the new type does not hold"
        )
    if was.nullable and not now.nullable:
        yield "now NOT NULL: old code may insert NULL"
    elif not now.nullable and _fills_itself(was) and not _fills_itself(now):
        yield "lost its default while NOT NULL: inserts from old code that leave it out fail"
    if now.generated is not None and was.generated is None:
        yield "now generated: old code that writes it fails"
    if now.identity == "always" and was.identity != "always" and now.generated is None:
        yield "now GENERATED ALWAYS AS IDENTITY: old code that supplies a value fails"


# -- indexes and constraints -----------------------------------------------------------------


def _indexes(context: _Context) -> Iterator[Change]:
    # An index behind a constraint shares its name; the constraint's row speaks for both.
    backed = set(context.old.constraints) | set(context.new.constraints)
    for key, was, now in _pairs(context.old.indexes, context.new.indexes):
        if key in backed:
            continue
        sample = now or was
        assert sample is not None
        table = f"{sample.schema}.{sample.table}"
        if table in context.removed_tables:
            continue
        # Nobody writes to a materialized view, so its indexes cannot break writes.
        writable = table not in context.added_tables and not context.is_view(table)
        if was is None and now is not None:
            yield _change(
                "index",
                "added",
                now.name,
                table=table,
                after=describe_index(now),
                reason=_REJECTS_WRITES if writable and now.unique else None,
            )
        elif now is None and was is not None:
            yield _change(
                "index",
                "removed",
                was.name,
                table=table,
                before=describe_index(was),
                reason=_ON_CONFLICT if writable and was.unique else None,
            )
        elif was is not None and now is not None and was != now:
            reason = None
            if writable and now.unique:
                reason = _REJECTS_WRITES
            elif writable and was.unique:
                reason = _ON_CONFLICT
            yield _change(
                "index",
                "changed",
                now.name,
                table=table,
                before=describe_index(was),
                after=describe_index(now),
                reason=reason,
            )


def _constraints(context: _Context) -> Iterator[Change]:
    for _key, was, now in _pairs(context.old.constraints, context.new.constraints):
        sample = now or was
        assert sample is not None
        table = f"{sample.schema}.{sample.table}"
        if table in context.removed_tables:
            continue
        if was is None and now is not None:
            breaking = table not in context.added_tables and now.kind in _RESTRICTING
            yield _change(
                "constraint",
                "added",
                now.name,
                table=table,
                after=describe_constraint(now),
                reason=_REJECTS_WRITES if breaking else None,
            )
        elif now is None and was is not None:
            yield _change(
                "constraint",
                "removed",
                was.name,
                table=table,
                before=describe_constraint(was),
                reason=_ON_CONFLICT if was.kind in _ARBITERS else None,
            )
        elif was is not None and now is not None and was != now:
            yield _change(
                "constraint",
                "changed",
                now.name,
                table=table,
                before=describe_constraint(was),
                after=describe_constraint(now),
                reason=_REJECTS_WRITES if now.kind in _RESTRICTING else None,
            )


# -- views, functions, sequences, enums ------------------------------------------------------


def _views(context: _Context) -> Iterator[Change]:
    for key, was, now in _pairs(context.old.views, context.new.views):
        if now is None and was is not None:
            yield _change(
                "view", "removed", key, before=describe_view(was), reason="old code that queries it fails"
            )
        elif was is None and now is not None:
            yield _change("view", "added", key, after=describe_view(now))
        elif was is not None and now is not None and not same_view(was, now, context.schemas):
            yield _change("view", "changed", key, before=describe_view(was), after=describe_view(now))


def _functions(context: _Context) -> Iterator[Change]:
    old = _by_name(context.old.functions.values())
    new = _by_name(context.new.functions.values())
    for qualified, was_overloads, now_overloads in _pairs(old, new):
        before, after = was_overloads or {}, now_overloads or {}
        gone = [before[arguments] for arguments in sorted(set(before) - set(after))]
        came = [after[arguments] for arguments in sorted(set(after) - set(before))]
        # Same name, other arguments: a signature change, which old callers notice.
        while gone and came:
            was, now = gone.pop(0), came.pop(0)
            yield _change(
                "function",
                "changed",
                qualified,
                before=signature(was),
                after=signature(now),
                reason="arguments changed: old code that calls it with the old arguments fails",
            )
        for was in gone:
            yield _change(
                "function",
                "removed",
                function_key(was),
                before=signature(was),
                reason="old code that calls it fails",
            )
        for now in came:
            yield _change("function", "added", function_key(now), after=signature(now))
        for arguments in sorted(set(before) & set(after)):
            was, now = before[arguments], after[arguments]
            if was == now:
                continue
            reasons = []
            if was.kind != now.kind:
                reasons.append(f"now a {now.kind}: old code that uses it as a {was.kind} fails")
            if was.result != now.result:
                reasons.append(f"returns {now.result or 'nothing'} instead of {was.result or 'nothing'}")
            yield _change(
                "function",
                "changed",
                function_key(now),
                before=squash(was.definition),
                after=squash(now.definition),
                reason="; ".join(reasons) or None,
            )


def _by_name(functions: Iterable[Function]) -> dict[str, dict[str, Function]]:
    out: dict[str, dict[str, Function]] = {}
    for function in functions:
        out.setdefault(f"{function.schema}.{function.name}", {})[function.arguments] = function
    return out


def _sequences(context: _Context) -> Iterator[Change]:
    for key, was, now in _pairs(context.old.sequences, context.new.sequences):
        if now is None and was is not None:
            # A serial or identity column took its sequence with it; that column's row says so.
            if was.owned_by and not context.has_column(
                owner_table(was), was.owned_by.rsplit(".", 1)[1], context.new
            ):
                continue
            yield _change(
                "sequence",
                "removed",
                key,
                before=describe_sequence(was),
                reason="old code that calls nextval() on it fails",
            )
        elif was is None and now is not None:
            if now.owned_by and not context.has_column(
                owner_table(now), now.owned_by.rsplit(".", 1)[1], context.old
            ):
                continue
            yield _change("sequence", "added", key, after=describe_sequence(now))
        elif was is not None and now is not None and was != now:
            yield _change(
                "sequence", "changed", key, before=describe_sequence(was), after=describe_sequence(now)
            )


def _enums(context: _Context) -> Iterator[Change]:
    for key, was, now in _pairs(context.old.enums, context.new.enums):
        if now is None and was is not None:
            yield _change(
                "enum", "removed", key, before=describe_enum(was), reason="old code that uses the type fails"
            )
        elif was is None and now is not None:
            yield _change("enum", "added", key, after=describe_enum(now))
        elif was is not None and now is not None and was != now:
            dropped = ", ".join(quote_literal(label) for label in was.labels if label not in now.labels)
            reason = f"labels removed ({dropped}): old code may still write them" if dropped else None
            yield _change(
                "enum", "changed", key, before=describe_enum(was), after=describe_enum(now), reason=reason
            )
