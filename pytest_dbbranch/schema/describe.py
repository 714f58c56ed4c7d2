"""How each object reads in a diff row: like the DDL a reviewer wrote, without the names
the row already shows, so ``before`` and ``after`` differ only where the schema does.
"""

from __future__ import annotations

import re

from .model import Constraint, EnumType, Function, Index, Sequence, Table, View


def describe_table(table: Table) -> str:
    columns = ", ".join(f"{column.name} {column.describe()}" for column in table.columns)
    return ("PARTITIONED " if table.partitioned else "") + f"({columns})"


def describe_table_options(table: Table) -> str:
    text = "partitioned table" if table.partitioned else "table"
    return text + (f", comment {quote_literal(table.comment)}" if table.comment is not None else "")


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".]+)'
_INDEX_HEAD = re.compile(rf"CREATE (UNIQUE )?INDEX {_IDENT} ON (?:ONLY )?{_IDENT}(?:\.{_IDENT})? USING ")


def describe_index(index: Index) -> str:
    """``UNIQUE btree (sku)``: the definition without the names the row already shows."""
    head = _INDEX_HEAD.match(index.definition)
    if head is None:
        return index.definition
    return (head.group(1) or "") + index.definition[head.end() :]


def describe_constraint(constraint: Constraint) -> str:
    return constraint.definition


def describe_view(view: View) -> str:
    return ("MATERIALIZED " if view.materialized else "") + view.definition


def function_key(function: Function) -> str:
    return f"{function.schema}.{function.name}({function.arguments})"


def signature(function: Function) -> str:
    text = f"{function.kind} ({function.arguments})"
    return text + (f" returns {function.result}" if function.result else "")


def describe_sequence(sequence: Sequence) -> str:
    text = f"{sequence.data_type} START {sequence.start} INCREMENT {sequence.increment}"
    return text + (f" OWNED BY {sequence.owned_by}" if sequence.owned_by else "")


def describe_enum(enum: EnumType) -> str:
    return "(" + ", ".join(map(quote_literal, enum.labels)) + ")"


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
