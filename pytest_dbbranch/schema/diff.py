"""What a migration changes, and which of those changes break code that is still running.

The question a reviewer asks of a pull request's migrations is not "what differs" but "can
the new schema go out while the old application is still serving traffic" (the expand and
contract way of shipping). So every change carries ``breaking`` and a ``reason`` written from
the old code's side, decided by the one table of rules in ``rules.py``; ``rule`` names the
rules that fired.

This module only finds the differences: every object on either side, paired by its
qualified name, reported as added, removed or changed, plus its comment, owner and grants
on rows of their own (kinds ``comment``, ``owner``, ``grant``) so that a comment edit never
reads as a change of the object itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from .describe import (
    describe_composite,
    describe_constraint,
    describe_domain,
    describe_enum,
    describe_extension,
    describe_grants,
    describe_index,
    describe_policy,
    describe_range,
    describe_rule,
    describe_sequence,
    describe_table,
    describe_table_options,
    describe_trigger,
    describe_view,
    function_key,
    signature,
)
from .equivalence import same_view
from .model import CURRENT_ROLE, Function, Schema, Table, owner_table, squash
from .reasons import Candidate, Context
from .rules import judge

KINDS = (
    "schema",
    "extension",
    "table",
    "column",
    "index",
    "constraint",
    "trigger",
    "policy",
    "rule",
    "view",
    "function",
    "sequence",
    "enum",
    "domain",
    "composite type",
    "range type",
    "comment",
    "owner",
    "grant",
)
ACTIONS = ("removed", "changed", "added")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Change:
    """One row of the diff. For ``comment``, ``owner`` and ``grant`` rows, ``name`` says
    whose (``column sku``, ``view public.v``)."""

    kind: str
    action: str
    table: str | None
    name: str
    before: str | None
    after: str | None
    breaking: bool = False
    reason: str | None = None
    rule: str | None = None


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
    context = Context(old, new)
    walk = _Walk(context)
    changes = [judged(candidate, context) for candidate in walk.candidates()]
    return SchemaDiff(tuple(sorted(changes, key=_order)))


def judged(candidate: Candidate, context: Context) -> Change:
    """The change as reported: ``breaking`` exactly when a rule gives a reason."""
    found = judge(candidate, context)
    return Change(
        kind=candidate.kind,
        action=candidate.action,
        table=candidate.table,
        name=candidate.name,
        before=candidate.before,
        after=candidate.after,
        breaking=bool(found),
        reason="; ".join(reason for _, reason in found) or None,
        rule=", ".join(rule for rule, _ in found) or None,
    )


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


def _pairs(old: Mapping[str, _T], new: Mapping[str, _T]) -> Iterator[tuple[str, _T | None, _T | None]]:
    """Every name on either side with its old and new value, ``None`` on the side that lacks it:
    the one walk each kind of object needs to tell removed, added and changed apart."""
    for key in sorted(set(old) | set(new)):
        yield key, old.get(key), new.get(key)


_BLANK = {"comment": None, "owner": CURRENT_ROLE, "grants": (), "column_comments": ()}


def _shape(item: Any) -> Any:
    """The object without what is reported on rows of its own (comment, owner, grants)."""
    names = {field.name for field in dataclasses.fields(item)}
    return dataclasses.replace(item, **{name: value for name, value in _BLANK.items() if name in names})


def _annotations(label: str, table: str | None, was: Any, now: Any) -> Iterator[Candidate]:
    """Comment, owner and grant rows of an object present on both sides."""
    if was.comment != now.comment:
        action = "added" if was.comment is None else "removed" if now.comment is None else "changed"
        yield Candidate("comment", action, label, table, was.comment, now.comment, was.comment, now.comment)
    if getattr(was, "owner", CURRENT_ROLE) != getattr(now, "owner", CURRENT_ROLE):
        yield Candidate("owner", "changed", label, table, was.owner, now.owner, was.owner, now.owner)
    if getattr(was, "grants", ()) != getattr(now, "grants", ()):
        action = "added" if not was.grants else "removed" if not now.grants else "changed"
        before, after = describe_grants(was.grants), describe_grants(now.grants)
        yield Candidate("grant", action, label, table, was.grants, now.grants, before, after)


class _Walk:
    """The per-kind comparisons, sharing what tables and views came or went."""

    def __init__(self, context: Context) -> None:
        self.old = context.old
        self.new = context.new
        self.removed = (set(self.old.tables) - set(self.new.tables)) | (
            set(self.old.views) - set(self.new.views)
        )
        self.schemas = {"pg_catalog"} | set(self.old.schemas) | set(self.new.schemas)
        self.schemas |= {
            item.schema
            for side in (self.old, self.new)
            for section in (side.tables, side.views, side.functions, side.sequences, side.enums)
            for item in section.values()
        }

    def candidates(self) -> Iterator[Candidate]:
        old, new = self.old, self.new
        yield from self._simple("schema", old.schemas, new.schemas, lambda item: "schema")
        yield from self._simple("extension", old.extensions, new.extensions, describe_extension)
        yield from self._tables()
        yield from self._indexes()
        yield from self._on_tables("constraint", old.constraints, new.constraints, describe_constraint)
        yield from self._on_tables("trigger", old.triggers, new.triggers, describe_trigger)
        yield from self._on_tables("policy", old.policies, new.policies, describe_policy)
        yield from self._on_tables("rule", old.rules, new.rules, describe_rule)
        yield from self._views()
        yield from self._functions()
        yield from self._sequences()
        yield from self._simple("enum", old.enums, new.enums, describe_enum)
        yield from self._simple("domain", old.domains, new.domains, describe_domain)
        yield from self._simple("composite type", old.composites, new.composites, describe_composite)
        yield from self._simple("range type", old.ranges, new.ranges, describe_range)

    def _simple(
        self, kind: str, old: Mapping[str, Any], new: Mapping[str, Any], describe: Callable[[Any], str]
    ) -> Iterator[Candidate]:
        for key, was, now in _pairs(old, new):
            if now is None:
                yield Candidate(kind, "removed", key, was=was, before=describe(was))
            elif was is None:
                yield Candidate(kind, "added", key, now=now, after=describe(now))
            else:
                if _shape(was) != _shape(now):
                    yield Candidate(kind, "changed", key, None, was, now, describe(was), describe(now))
                yield from _annotations(f"{kind} {key}", None, was, now)

    # -- tables and columns ------------------------------------------------------------------

    def _tables(self) -> Iterator[Candidate]:
        for key, was, now in _pairs(self.old.tables, self.new.tables):
            if now is None and was is not None:
                yield Candidate("table", "removed", key, key, was=was, before=describe_table(was))
            elif was is None and now is not None:
                yield Candidate("table", "added", key, key, now=now, after=describe_table(now))
            elif was is not None and now is not None:
                if _shape(dataclasses.replace(was, columns=())) != _shape(
                    dataclasses.replace(now, columns=())
                ):
                    before, after = describe_table_options(was), describe_table_options(now)
                    yield Candidate("table", "changed", key, key, was, now, before, after)
                yield from _annotations(f"table {key}", key, was, now)
                yield from self._columns(key, was, now)

    def _columns(self, table: str, before: Table, after: Table) -> Iterator[Candidate]:
        old = {column.name: column for column in before.columns}
        new = {column.name: column for column in after.columns}
        for column in before.columns:
            if column.name not in new:
                yield Candidate("column", "removed", column.name, table, was=column, before=column.describe())
        for column in after.columns:
            if column.name not in old:
                yield Candidate("column", "added", column.name, table, now=column, after=column.describe())
        for name, was in old.items():
            now = new.get(name)
            if now is None:
                continue
            if was.definition() != now.definition():
                yield Candidate("column", "changed", name, table, was, now, was.describe(), now.describe())
            yield from _annotations(f"column {name}", table, was, now)

    # -- objects of a table ------------------------------------------------------------------

    def _indexes(self) -> Iterator[Candidate]:
        # An index behind a constraint shares its name; the constraint's row speaks for its
        # definition, the index keeps its own clustering and comment.
        backed = set(self.old.constraints) | set(self.new.constraints)
        for key, was, now in _pairs(self.old.indexes, self.new.indexes):
            sample = now or was
            assert sample is not None
            table = f"{sample.schema}.{sample.table}"
            if table in self.removed:
                continue
            if was is None and now is not None:
                if key not in backed:
                    yield Candidate("index", "added", now.name, table, now=now, after=describe_index(now))
            elif now is None and was is not None:
                if key not in backed:
                    yield Candidate("index", "removed", was.name, table, was=was, before=describe_index(was))
            elif was is not None and now is not None:
                differs = was.clustered != now.clustered if key in backed else _shape(was) != _shape(now)
                if differs:
                    yield Candidate(
                        "index",
                        "changed",
                        now.name,
                        table,
                        was,
                        now,
                        describe_index(was),
                        describe_index(now),
                    )
                yield from _annotations(f"index {now.name}", table, was, now)

    def _on_tables(
        self, kind: str, old: Mapping[str, Any], new: Mapping[str, Any], describe: Callable[[Any], str]
    ) -> Iterator[Candidate]:
        """Constraints, triggers, policies and rules: named within their table, gone with it."""
        for _key, was, now in _pairs(old, new):
            sample: Any = now or was
            table = f"{sample.schema}.{sample.table}"
            if table in self.removed:
                continue
            if was is None:
                yield Candidate(kind, "added", sample.name, table, now=now, after=describe(now))
            elif now is None:
                yield Candidate(kind, "removed", sample.name, table, was=was, before=describe(was))
            else:
                if _shape(was) != _shape(now):
                    yield Candidate(kind, "changed", now.name, table, was, now, describe(was), describe(now))
                yield from _annotations(f"{kind} {now.name}", table, was, now)

    # -- views, functions, sequences ---------------------------------------------------------

    def _views(self) -> Iterator[Candidate]:
        for key, was, now in _pairs(self.old.views, self.new.views):
            if now is None and was is not None:
                yield Candidate("view", "removed", key, was=was, before=describe_view(was))
            elif was is None and now is not None:
                yield Candidate("view", "added", key, now=now, after=describe_view(now))
            elif was is not None and now is not None:
                if not same_view(was, now, self.schemas) or (was.options, was.columns) != (
                    now.options,
                    now.columns,
                ):
                    yield Candidate(
                        "view", "changed", key, None, was, now, describe_view(was), describe_view(now)
                    )
                label = "materialized view" if now.materialized else "view"
                yield from _annotations(f"{label} {key}", None, was, now)
                before, after = dict(was.column_comments), dict(now.column_comments)
                for column, text_was, text_now in _pairs(before, after):
                    if text_was != text_now:
                        action = "added" if text_was is None else "removed" if text_now is None else "changed"
                        yield Candidate(
                            "comment",
                            action,
                            f"column {key}.{column}",
                            None,
                            text_was,
                            text_now,
                            text_was,
                            text_now,
                        )

    def _functions(self) -> Iterator[Candidate]:
        old, new = _by_name(self.old.functions.values()), _by_name(self.new.functions.values())
        for qualified, was_overloads, now_overloads in _pairs(old, new):
            before, after = was_overloads or {}, now_overloads or {}
            gone = [before[arguments] for arguments in sorted(set(before) - set(after))]
            came = [after[arguments] for arguments in sorted(set(after) - set(before))]
            # Same name, other arguments: a signature change, which old callers notice.
            while gone and came:
                was, now = gone.pop(0), came.pop(0)
                yield Candidate(
                    "function", "changed", qualified, None, was, now, signature(was), signature(now)
                )
            for was in gone:
                yield Candidate("function", "removed", function_key(was), was=was, before=signature(was))
            for now in came:
                yield Candidate("function", "added", function_key(now), now=now, after=signature(now))
            for arguments in sorted(set(before) & set(after)):
                was, now = before[arguments], after[arguments]
                key = function_key(now)
                if _shape(was) != _shape(now):
                    text_was, text_now = squash(was.definition), squash(now.definition)
                    yield Candidate("function", "changed", key, None, was, now, text_was, text_now)
                yield from _annotations(f"{now.kind} {key}", None, was, now)

    def _sequences(self) -> Iterator[Candidate]:
        for key, was, now in _pairs(self.old.sequences, self.new.sequences):
            if now is None and was is not None:
                # A serial or identity column took its sequence with it; that column's row says so.
                if was.owned_by and not _has_column(
                    self.new, owner_table(was), was.owned_by.rsplit(".", 1)[1]
                ):
                    continue
                yield Candidate("sequence", "removed", key, was=was, before=describe_sequence(was))
            elif was is None and now is not None:
                if now.owned_by and not _has_column(
                    self.old, owner_table(now), now.owned_by.rsplit(".", 1)[1]
                ):
                    continue
                yield Candidate("sequence", "added", key, now=now, after=describe_sequence(now))
            elif was is not None and now is not None:
                if _shape(was) != _shape(now):
                    before, after = describe_sequence(was), describe_sequence(now)
                    yield Candidate("sequence", "changed", key, None, was, now, before, after)
                yield from _annotations(f"sequence {key}", None, was, now)


def _has_column(side: Schema, table: str | None, column: str) -> bool:
    found = side.tables.get(table or "")
    return found is not None and found.column(column) is not None


def _by_name(functions: Iterable[Function]) -> dict[str, dict[str, Function]]:
    out: dict[str, dict[str, Function]] = {}
    for function in functions:
        out.setdefault(f"{function.schema}.{function.name}", {})[function.arguments] = function
    return out
