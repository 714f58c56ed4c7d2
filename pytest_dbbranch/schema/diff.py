"""What a migration changes, and which of those changes break code that is still running.

The question a reviewer asks of a pull request's migrations is not "what differs" but "can
the new schema go out while the old application is still serving traffic" (the expand and
contract way of shipping). So every change carries ``breaking`` and a ``reason`` written from
the old code's side: a removed column breaks the queries that name it, a new NOT NULL column
without a default breaks the inserts that do not know about it, a new unique constraint may
reject rows the old code still writes.

The rendering is meant for a pull-request comment: deterministic (re-running the job edits
the comment without spurious churn), grouped by table, and safe to paste into GitHub
Markdown whatever the identifiers and expressions contain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .model import (
    Column,
    Constraint,
    EnumType,
    Function,
    Index,
    Schema,
    Sequence,
    Table,
    View,
    owner_table,
)

KINDS = ("table", "column", "index", "constraint", "view", "function", "sequence", "enum")
ACTIONS = ("removed", "changed", "added")

_REJECTS_WRITES = "may reject writes old code makes"
_ON_CONFLICT = "old code whose INSERT … ON CONFLICT relies on it fails"
#: Constraint kinds that can turn a write old code makes into an error.
_RESTRICTING = ("primary key", "unique", "check", "foreign key", "exclusion")
#: Constraint kinds an ON CONFLICT clause can infer as its arbiter.
_ARBITERS = ("primary key", "unique", "exclusion")


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


# -- tables and columns ----------------------------------------------------------------------


def _tables(context: _Context) -> Iterator[Change]:
    for key in sorted(context.removed_tables):
        table = context.old.tables[key]
        yield Change(
            "table",
            "removed",
            key,
            key,
            _describe_table(table),
            None,
            True,
            "old code that reads or writes the table fails",
        )
    for key in sorted(context.added_tables):
        yield Change("table", "added", key, key, None, _describe_table(context.new.tables[key]))
    for key in sorted(set(context.old.tables) & set(context.new.tables)):
        before, after = context.old.tables[key], context.new.tables[key]
        if (before.partitioned, before.comment) != (after.partitioned, after.comment):
            yield Change("table", "changed", key, key, _table_options(before), _table_options(after))
        yield from _columns(key, before, after)


def _describe_table(table: Table) -> str:
    columns = ", ".join(f"{column.name} {column.describe()}" for column in table.columns)
    return ("PARTITIONED " if table.partitioned else "") + f"({columns})"


def _table_options(table: Table) -> str:
    text = "partitioned table" if table.partitioned else "table"
    return text + (f", comment {_literal(table.comment)}" if table.comment is not None else "")


def _columns(table: str, before: Table, after: Table) -> Iterator[Change]:
    old = {column.name: column for column in before.columns}
    new = {column.name: column for column in after.columns}
    added = [column for column in after.columns if column.name not in old]
    for column in before.columns:
        if column.name in new:
            continue
        reason = f"old code that reads or writes {_ident(column.name)} fails"
        candidates = [_ident(other.name) for other in added if other.type == column.type]
        if candidates:
            reason += f"; rename candidate: {' or '.join(candidates)} (same type {column.type})"
        yield Change("column", "removed", table, column.name, column.describe(), None, True, reason)
    for column in added:
        needs_value = not column.nullable and not _fills_itself(column)
        yield Change(
            "column",
            "added",
            table,
            column.name,
            None,
            column.describe(),
            needs_value,
            "NOT NULL without a default: inserts from old code, which never set it, fail"
            if needs_value
            else None,
        )
    for name, was in old.items():
        now = new.get(name)
        if now is None or now == was:
            continue
        reasons = list(_column_reasons(was, now))
        yield Change(
            "column",
            "changed",
            table,
            name,
            was.describe(),
            now.describe(),
            bool(reasons),
            "; ".join(reasons) or None,
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


_INTEGERS = ("smallint", "integer", "bigint")
_VARCHAR = re.compile(r"character varying(?:\((\d+)\))?")
_NUMERIC = re.compile(r"numeric(?:\((\d+),(\d+)\))?")


def is_widening(old: str, new: str) -> bool:
    """True when every value of ``old`` fits ``new`` unchanged, so old code cannot notice.

    Only the conversions listed here count; anything else (including timestamp to
    timestamptz, which reinterprets stored values in the session time zone) is a change
    old code may trip over.
    """
    if old.endswith("[]") and new.endswith("[]"):
        return is_widening(old[:-2], new[:-2])
    if old in _INTEGERS and new in _INTEGERS:
        return _INTEGERS.index(new) > _INTEGERS.index(old)
    if (old, new) == ("real", "double precision"):
        return True
    varchar = _VARCHAR.fullmatch(old)
    if varchar:
        if new == "text":
            return True
        wider = _VARCHAR.fullmatch(new)
        if wider is None or varchar.group(1) is None:
            return False
        return wider.group(1) is None or int(wider.group(1)) > int(varchar.group(1))
    numeric, wider = _NUMERIC.fullmatch(old), _NUMERIC.fullmatch(new)
    if numeric and wider and numeric.group(1) is not None:
        if wider.group(1) is None:
            return True
        precision, scale = int(numeric.group(1)), int(numeric.group(2))
        new_precision, new_scale = int(wider.group(1)), int(wider.group(2))
        return (
            new_scale == scale
            and new_precision >= precision
            and new_precision - new_scale >= precision - scale
        )
    return False


# -- indexes and constraints -----------------------------------------------------------------


def _indexes(context: _Context) -> Iterator[Change]:
    # An index behind a constraint shares its name; the constraint's row speaks for both.
    backed = set(context.old.constraints) | set(context.new.constraints)
    for key in sorted((set(context.old.indexes) | set(context.new.indexes)) - backed):
        was, now = context.old.indexes.get(key), context.new.indexes.get(key)
        sample = now or was
        assert sample is not None
        table = f"{sample.schema}.{sample.table}"
        if table in context.removed_tables:
            continue
        # Nobody writes to a materialized view, so its indexes cannot break writes.
        writable = table not in context.added_tables and not context.is_view(table)
        if was is None and now is not None:
            breaking = writable and now.unique
            yield Change(
                "index",
                "added",
                table,
                now.name,
                None,
                _describe_index(now),
                breaking,
                _REJECTS_WRITES if breaking else None,
            )
        elif now is None and was is not None:
            breaking = writable and was.unique
            yield Change(
                "index",
                "removed",
                table,
                was.name,
                _describe_index(was),
                None,
                breaking,
                _ON_CONFLICT if breaking else None,
            )
        elif was is not None and now is not None and was != now:
            reason = None
            if writable and now.unique:
                reason = _REJECTS_WRITES
            elif writable and was.unique:
                reason = _ON_CONFLICT
            yield Change(
                "index",
                "changed",
                table,
                now.name,
                _describe_index(was),
                _describe_index(now),
                reason is not None,
                reason,
            )


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".]+)'
_INDEX_HEAD = re.compile(rf"CREATE (UNIQUE )?INDEX {_IDENT} ON (?:ONLY )?{_IDENT}(?:\.{_IDENT})? USING ")


def _describe_index(index: Index) -> str:
    """``UNIQUE btree (sku)``: the definition without the names the row already shows."""
    head = _INDEX_HEAD.match(index.definition)
    if head is None:
        return index.definition
    return (head.group(1) or "") + index.definition[head.end() :]


def _constraints(context: _Context) -> Iterator[Change]:
    for key in sorted(set(context.old.constraints) | set(context.new.constraints)):
        was, now = context.old.constraints.get(key), context.new.constraints.get(key)
        sample = now or was
        assert sample is not None
        table = f"{sample.schema}.{sample.table}"
        if table in context.removed_tables:
            continue
        if was is None and now is not None:
            breaking = table not in context.added_tables and now.kind in _RESTRICTING
            yield Change(
                "constraint",
                "added",
                table,
                now.name,
                None,
                _describe_constraint(now),
                breaking,
                _REJECTS_WRITES if breaking else None,
            )
        elif now is None and was is not None:
            breaking = was.kind in _ARBITERS
            yield Change(
                "constraint",
                "removed",
                table,
                was.name,
                _describe_constraint(was),
                None,
                breaking,
                _ON_CONFLICT if breaking else None,
            )
        elif was is not None and now is not None and was != now:
            breaking = now.kind in _RESTRICTING
            yield Change(
                "constraint",
                "changed",
                table,
                now.name,
                _describe_constraint(was),
                _describe_constraint(now),
                breaking,
                _REJECTS_WRITES if breaking else None,
            )


def _describe_constraint(constraint: Constraint) -> str:
    return constraint.definition


# -- views, functions, sequences, enums ------------------------------------------------------


def _views(context: _Context) -> Iterator[Change]:
    for key in sorted(set(context.old.views) | set(context.new.views)):
        was, now = context.old.views.get(key), context.new.views.get(key)
        if now is None and was is not None:
            yield Change(
                "view",
                "removed",
                None,
                key,
                _describe_view(was),
                None,
                True,
                "old code that queries it fails",
            )
        elif was is None and now is not None:
            yield Change("view", "added", None, key, None, _describe_view(now))
        elif was is not None and now is not None and not _same_view(was, now, context.schemas):
            yield Change("view", "changed", None, key, _describe_view(was), _describe_view(now))


def _describe_view(view: View) -> str:
    return ("MATERIALIZED " if view.materialized else "") + view.definition


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[^\W\d][\w$]*|.", re.DOTALL)


def _same_view(was: View, now: View, schemas: Collection[str]) -> bool:
    """Equal, or different only in how column references are qualified.

    PostgreSQL 16 stopped qualifying column names in single-table queries when it prints a
    view, so a production server on 15 and a template on 18 print the same view
    differently. Qualifiers that name a schema are kept, so a view that now reads a table
    from another schema still shows; a view that switched a column between two joined
    tables without any other change does not, which is the price of that tolerance.
    """
    if was == now:
        return True
    if was.materialized != now.materialized:
        return False
    return _unqualified(was.definition, schemas) == _unqualified(now.definition, schemas)


def _unqualified(text: str, schemas: Collection[str]) -> str:
    tokens = _TOKEN.findall(text)
    out: list[str] = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        qualifies = (
            _is_identifier(token)
            and position + 2 < len(tokens)
            and tokens[position + 1] == "."
            and _is_identifier(tokens[position + 2])
            and (position == 0 or tokens[position - 1] != ".")
            and _unquote(token) not in schemas
        )
        if qualifies:
            position += 2
            continue
        out.append(token)
        position += 1
    return "".join(out)


def _is_identifier(token: str) -> bool:
    return token.startswith('"') or token[:1].isalpha() or token[:1] == "_"


def _unquote(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def _functions(context: _Context) -> Iterator[Change]:
    old = _by_name(context.old.functions.values())
    new = _by_name(context.new.functions.values())
    for qualified in sorted(set(old) | set(new)):
        before, after = old.get(qualified, {}), new.get(qualified, {})
        gone = [before[arguments] for arguments in sorted(set(before) - set(after))]
        came = [after[arguments] for arguments in sorted(set(after) - set(before))]
        # Same name, other arguments: a signature change, which old callers notice.
        while gone and came:
            was, now = gone.pop(0), came.pop(0)
            yield Change(
                "function",
                "changed",
                None,
                qualified,
                _signature(was),
                _signature(now),
                True,
                "arguments changed: old code that calls it with the old arguments fails",
            )
        for was in gone:
            yield Change(
                "function",
                "removed",
                None,
                _function_key(was),
                _signature(was),
                None,
                True,
                "old code that calls it fails",
            )
        for now in came:
            yield Change("function", "added", None, _function_key(now), None, _signature(now))
        for arguments in sorted(set(before) & set(after)):
            was, now = before[arguments], after[arguments]
            if was == now:
                continue
            reasons = []
            if was.kind != now.kind:
                reasons.append(f"now a {now.kind}: old code that uses it as a {was.kind} fails")
            if was.result != now.result:
                reasons.append(f"returns {now.result or 'nothing'} instead of {was.result or 'nothing'}")
            yield Change(
                "function",
                "changed",
                None,
                _function_key(now),
                _squash(was.definition),
                _squash(now.definition),
                bool(reasons),
                "; ".join(reasons) or None,
            )


def _by_name(functions: Iterable[Function]) -> dict[str, dict[str, Function]]:
    out: dict[str, dict[str, Function]] = {}
    for function in functions:
        out.setdefault(f"{function.schema}.{function.name}", {})[function.arguments] = function
    return out


def _function_key(function: Function) -> str:
    return f"{function.schema}.{function.name}({function.arguments})"


def _signature(function: Function) -> str:
    text = f"{function.kind} ({function.arguments})"
    return text + (f" returns {function.result}" if function.result else "")


def _sequences(context: _Context) -> Iterator[Change]:
    for key in sorted(set(context.old.sequences) | set(context.new.sequences)):
        was, now = context.old.sequences.get(key), context.new.sequences.get(key)
        if now is None and was is not None:
            # A serial or identity column took its sequence with it; that column's row says so.
            if was.owned_by and not context.has_column(
                owner_table(was), was.owned_by.rsplit(".", 1)[1], context.new
            ):
                continue
            yield Change(
                "sequence",
                "removed",
                None,
                key,
                _describe_sequence(was),
                None,
                True,
                "old code that calls nextval() on it fails",
            )
        elif was is None and now is not None:
            if now.owned_by and not context.has_column(
                owner_table(now), now.owned_by.rsplit(".", 1)[1], context.old
            ):
                continue
            yield Change("sequence", "added", None, key, None, _describe_sequence(now))
        elif was is not None and now is not None and was != now:
            yield Change("sequence", "changed", None, key, _describe_sequence(was), _describe_sequence(now))


def _describe_sequence(sequence: Sequence) -> str:
    text = f"{sequence.data_type} START {sequence.start} INCREMENT {sequence.increment}"
    return text + (f" OWNED BY {sequence.owned_by}" if sequence.owned_by else "")


def _enums(context: _Context) -> Iterator[Change]:
    for key in sorted(set(context.old.enums) | set(context.new.enums)):
        was, now = context.old.enums.get(key), context.new.enums.get(key)
        if now is None and was is not None:
            yield Change(
                "enum",
                "removed",
                None,
                key,
                _describe_enum(was),
                None,
                True,
                "old code that uses the type fails",
            )
        elif was is None and now is not None:
            yield Change("enum", "added", None, key, None, _describe_enum(now))
        elif was is not None and now is not None and was != now:
            dropped = [label for label in was.labels if label not in now.labels]
            reason = None
            if dropped:
                reason = (
                    f"labels removed ({', '.join(map(_literal, dropped))}): old code may still write them"
                )
            yield Change(
                "enum", "changed", None, key, _describe_enum(was), _describe_enum(now), bool(dropped), reason
            )


def _describe_enum(enum: EnumType) -> str:
    return "(" + ", ".join(map(_literal, enum.labels)) + ")"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _squash(text: str) -> str:
    return " ".join(text.split())


# -- rendering -------------------------------------------------------------------------------

#: Longest text shown in a Markdown cell; JSON always carries the full text.
CELL_LIMIT = 160
_CONTEXT = 40
_WARNING = "⚠️"
_SECTIONS = (("view", "Views"), ("function", "Functions"), ("sequence", "Sequences"), ("enum", "Enums"))


def render_json(diff: SchemaDiff) -> str:
    return json.dumps(diff.to_dict(), indent=2, ensure_ascii=False) + "\n"


def render_markdown(
    diff: SchemaDiff,
    *,
    title: str = "Schema changes",
    old_label: str = "production",
    new_label: str = "migrated",
) -> str:
    """A GitHub comment: summary line, one section per table, then the other object kinds."""
    lines = [f"## {_text(title)}", ""]
    between = f"{_text(old_label)} → {_text(new_label)}"
    if diff.empty:
        lines.append(f"No schema changes ({between}).")
        return "\n".join(lines) + "\n"
    total, breaking = len(diff.changes), len(diff.breaking)
    summary = f"**{total} change{'s' if total != 1 else ''}, {breaking} breaking** ({between})"
    lines += [f"{_WARNING} {summary}" if breaking else summary, ""]
    tables: dict[str, list[Change]] = {}
    others: dict[str, list[Change]] = {}
    for change in diff.changes:
        if change.table is not None:
            tables.setdefault(change.table, []).append(change)
        else:
            others.setdefault(change.kind, []).append(change)
    for table, changes in tables.items():
        lines += _section(_code(table), changes, with_kind=True)
    for kind, heading in _SECTIONS:
        if kind in others:
            lines += _section(heading, others[kind], with_kind=False)
    return "\n".join(lines).rstrip("\n") + "\n"


def _section(heading: str, changes: list[Change], *, with_kind: bool) -> list[str]:
    lines = [f"### {heading}", "", "| change | object | before | after |", "| --- | --- | --- | --- |"]
    for change in changes:
        label = f"{change.kind} {change.action}" if with_kind else change.action
        if change.breaking:
            label = f"{_WARNING} **{label}**"
        before, after = _clip_pair(change.before, change.after)
        cells = (label, _code(change.name), _code(before), _code(after))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    reasons = [change for change in changes if change.breaking]
    if reasons:
        lines.append("Breaking for code still running against the old schema:")
        lines.append("")
        for change in reasons:
            lines.append(
                f"- {_WARNING} {change.kind} {_code(change.name)}: {_text(change.reason or 'breaking')}"
            )
        lines.append("")
    return lines


def _clip_pair(before: str | None, after: str | None) -> tuple[str | None, str | None]:
    """Long texts cut down to the part where they differ, so the cells show the change."""
    if before is None or after is None or max(len(before), len(after)) <= CELL_LIMIT:
        return _clip(before), _clip(after)
    shortest = min(len(before), len(after))
    prefix = 0
    while prefix < shortest and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and before[-1 - suffix] == after[-1 - suffix]:
        suffix += 1
    start, end = max(0, prefix - _CONTEXT), max(0, suffix - _CONTEXT)
    cut = []
    for text in (before, after):
        middle = text[start : len(text) - end]
        cut.append(("…" if start else "") + middle + ("…" if end else ""))
    return _clip(cut[0]), _clip(cut[1])


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= CELL_LIMIT:
        return text
    return text[: CELL_LIMIT - 1] + "…"


def _code(text: str | None) -> str:
    """An inline code span that survives backticks in the text; empty for no text."""
    if not text:
        return ""
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def _text(text: str) -> str:
    """Plain text for Markdown: nothing in a label or reason can start formatting or a tag."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))
