"""How each object reads in a diff row: like the DDL a reviewer wrote, without the names
the row already shows, so ``before`` and ``after`` differ only where the schema does.
"""

from __future__ import annotations

import re

from .model import (
    CompositeType,
    Constraint,
    Domain,
    EnumType,
    Extension,
    Function,
    Index,
    Policy,
    RangeType,
    Rule,
    Sequence,
    Table,
    Trigger,
    View,
)


def describe_table(table: Table) -> str:
    columns = ", ".join(f"{column.name} {column.describe()}" for column in table.columns)
    return ("PARTITIONED " if table.partitioned else "") + f"({columns})"


def describe_table_options(table: Table) -> str:
    """The table's own settings, the ones that are not columns: how it is partitioned or
    which partition it is, storage, row-level security."""
    parts = ["partitioned table" if table.partitioned else "table"]
    if table.partition_key:
        parts.append(f"PARTITION BY {table.partition_key}")
    if table.partition_of:
        parts.append(f"PARTITION OF {table.partition_of} {table.partition_bound or ''}".rstrip())
    if table.inherits:
        parts.append(f"INHERITS ({', '.join(table.inherits)})")
    if table.unlogged:
        parts.append("UNLOGGED")
    if table.options:
        parts.append(f"WITH ({', '.join(table.options)})")
    if table.access_method != "heap":
        parts.append(f"USING {table.access_method}")
    if table.replica_identity != "default":
        parts.append(f"REPLICA IDENTITY {table.replica_identity.upper()}")
    if table.row_security:
        parts.append("ROW LEVEL SECURITY" + (" FORCED" if table.force_row_security else ""))
    elif table.force_row_security:
        parts.append("FORCE ROW LEVEL SECURITY (not enabled)")
    return ", ".join(parts)


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".]+)'
_INDEX_HEAD = re.compile(rf"CREATE (UNIQUE )?INDEX {_IDENT} ON (?:ONLY )?{_IDENT}(?:\.{_IDENT})? USING ")


def describe_index(index: Index) -> str:
    """``UNIQUE btree (sku)``: the definition without the names the row already shows."""
    head = _INDEX_HEAD.match(index.definition)
    text = index.definition if head is None else (head.group(1) or "") + index.definition[head.end() :]
    return text + (" (clustered)" if index.clustered else "")


def describe_constraint(constraint: Constraint) -> str:
    return constraint.definition


_TRIGGER_HEAD = re.compile(rf"CREATE (CONSTRAINT )?TRIGGER {_IDENT} ")


def describe_trigger(trigger: Trigger) -> str:
    """``BEFORE INSERT ON public.items FOR EACH ROW EXECUTE FUNCTION public.f()``."""
    head = _TRIGGER_HEAD.match(trigger.definition)
    text = trigger.definition if head is None else (head.group(1) or "") + trigger.definition[head.end() :]
    return text + ("" if trigger.enabled == "origin" else f" ({trigger.enabled})")


def describe_policy(policy: Policy) -> str:
    text = f"{'PERMISSIVE' if policy.permissive else 'RESTRICTIVE'} FOR {policy.command}"
    text += f" TO {', '.join(policy.roles)}"
    if policy.using is not None:
        text += f" USING ({policy.using})"
    if policy.with_check is not None:
        text += f" WITH CHECK ({policy.with_check})"
    return text


_RULE_HEAD = re.compile(rf"CREATE RULE {_IDENT} AS\s+")


def describe_rule(rule: Rule) -> str:
    head = _RULE_HEAD.match(rule.definition)
    text = rule.definition if head is None else rule.definition[head.end() :]
    return " ".join(text.split()) + ("" if rule.enabled == "origin" else f" ({rule.enabled})")


def describe_view(view: View) -> str:
    options = f"WITH ({', '.join(view.options)}) " if view.options else ""
    return ("MATERIALIZED " if view.materialized else "") + options + view.definition


def function_key(function: Function) -> str:
    return f"{function.schema}.{function.name}({function.arguments})"


def signature(function: Function) -> str:
    text = f"{function.kind} ({function.arguments})"
    return text + (f" returns {function.result}" if function.result else "")


def describe_sequence(sequence: Sequence) -> str:
    text = f"{sequence.data_type} START {sequence.start} INCREMENT {sequence.increment}"
    text += f" MINVALUE {sequence.minimum} MAXVALUE {sequence.maximum} CACHE {sequence.cache}"
    text += " CYCLE" if sequence.cycle else ""
    text += " UNLOGGED" if sequence.unlogged else ""
    return text + (f" OWNED BY {sequence.owned_by}" if sequence.owned_by else "")


def describe_enum(enum: EnumType) -> str:
    return "(" + ", ".join(map(quote_literal, enum.labels)) + ")"


def describe_domain(domain: Domain) -> str:
    parts = [domain.base_type]
    if domain.collation:
        parts.append(f"COLLATE {domain.collation}")
    if domain.not_null:
        parts.append("NOT NULL")
    if domain.default is not None:
        parts.append(f"DEFAULT {domain.default}")
    parts += [f"CONSTRAINT {quote_ident(name)} {definition}" for name, definition in domain.constraints]
    return " ".join(parts)


def describe_composite(composite: CompositeType) -> str:
    return (
        "("
        + ", ".join(
            f"{attribute.name} {attribute.type}"
            + (f" COLLATE {attribute.collation}" if attribute.collation else "")
            for attribute in composite.attributes
        )
        + ")"
    )


def describe_range(range_type: RangeType) -> str:
    return f"RANGE ({range_type.definition})"


def describe_extension(extension: Extension) -> str:
    return f"VERSION {quote_literal(extension.version)} SCHEMA {extension.schema}"


def describe_grants(grants: tuple[str, ...]) -> str | None:
    return ", ".join(grants) or None


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
