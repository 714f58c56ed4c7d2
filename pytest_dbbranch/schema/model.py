"""A PostgreSQL schema as plain, comparable values.

Two consumers need the same model: the pull-request diff (production snapshot against the
migrated template) and migration checks that compare fingerprints (upgrade twice, or
downgrade then upgrade, must land on the same schema). Both only work if the same
migrations on two databases give equal values, so nothing here may carry an OID, the
database's name or the physical order of catalog rows.

Roles are the one thing that legitimately differs between two databases built by the same
migrations: production belongs to one role, a CI server to another. So ownership is kept as
:data:`CURRENT_ROLE` or :data:`OTHER_ROLE` (whoever reads the schema owns it, or someone
else does), and grants name the reading role ``current role`` too; other grantees keep
their names, since a grant to ``app_reader`` is what a migration wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Part of the canonical form, so fingerprints from an incompatible model never compare equal.
SCHEMA_FORMAT = "dbbranch-schema-v2"

#: The owner of an object, as the reading role sees it.
CURRENT_ROLE = "current role"
OTHER_ROLE = "other role"


@dataclass(frozen=True)
class Column:
    """One table column; ``generated`` ends in `` VIRTUAL`` for PostgreSQL 18 virtual columns.
    ``options`` are the storage settings that differ from the type's (``STORAGE EXTERNAL``,
    ``COMPRESSION pglz``, ``STATISTICS 500``, ``n_distinct=10``); ``grants`` are column
    privileges (``GRANT SELECT (col)``) as ``role:PRIVILEGE``."""

    name: str
    type: str
    nullable: bool
    default: str | None = None
    identity: str | None = None
    generated: str | None = None
    collation: str | None = None
    options: tuple[str, ...] = ()
    comment: str | None = None
    grants: tuple[str, ...] = ()

    def describe(self) -> str:
        """Reads like the DDL a reviewer wrote, which is what a diff cell should show."""
        parts = [self.type]
        if self.collation:
            parts.append(f"COLLATE {self.collation}")
        if not self.nullable:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.identity:
            parts.append(f"GENERATED {self.identity.upper()} AS IDENTITY")
        if self.generated:
            expression, virtual = _split_generated(self.generated)
            parts.append(f"GENERATED ALWAYS AS ({expression}) {'VIRTUAL' if virtual else 'STORED'}")
        parts.extend(self.options)
        return " ".join(parts)

    def definition(self) -> Column:
        """The column without what is reported on its own rows (comment, grants)."""
        return dataclasses.replace(self, comment=None, grants=())


@dataclass(frozen=True)
class Table:
    """A table or partitioned table. ``partition_key`` is ``pg_get_partkeydef`` (``RANGE
    (at)``); a partition names its parent in ``partition_of`` and its bound in
    ``partition_bound``; ``options`` are the storage parameters (``fillfactor=70``)."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    partition_key: str | None = None
    partition_of: str | None = None
    partition_bound: str | None = None
    inherits: tuple[str, ...] = ()
    unlogged: bool = False
    options: tuple[str, ...] = ()
    access_method: str = "heap"
    replica_identity: str = "default"
    row_security: bool = False
    force_row_security: bool = False
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def partitioned(self) -> bool:
        return self.partition_key is not None

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Index:
    """Every index, including those behind a primary key or unique constraint."""

    schema: str
    table: str
    name: str
    definition: str
    unique: bool
    primary: bool
    clustered: bool = False
    comment: str | None = None


@dataclass(frozen=True)
class Constraint:
    """Primary key, unique, check, foreign key or exclusion constraint of a table;
    ``definition`` is ``pg_get_constraintdef`` (deferrability and ``NOT VALID`` included)."""

    schema: str
    table: str
    name: str
    kind: str
    definition: str
    comment: str | None = None


@dataclass(frozen=True)
class Trigger:
    """A user trigger (``pg_get_triggerdef``); ``enabled`` is ``origin`` (the default),
    ``disabled``, ``replica`` or ``always``."""

    schema: str
    table: str
    name: str
    definition: str
    enabled: str = "origin"
    comment: str | None = None


@dataclass(frozen=True)
class Policy:
    """A row-level security policy; ``command`` is ``ALL``, ``SELECT``, ``INSERT``,
    ``UPDATE`` or ``DELETE``; ``using`` and ``with_check`` are ``pg_get_expr`` texts."""

    schema: str
    table: str
    name: str
    command: str
    permissive: bool
    roles: tuple[str, ...]
    using: str | None = None
    with_check: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class Rule:
    """A rewrite rule (``pg_get_ruledef``), except the ``_RETURN`` rule every view has."""

    schema: str
    table: str
    name: str
    definition: str
    enabled: str = "origin"
    comment: str | None = None


@dataclass(frozen=True)
class Attribute:
    """One attribute of a composite type or column of a view, in their order."""

    name: str
    type: str
    collation: str | None = None


@dataclass(frozen=True)
class View:
    """A view or materialized view; ``columns`` are what its queries return (the definition
    says how), ``column_comments`` are ``(column, comment)`` pairs."""

    schema: str
    name: str
    definition: str
    materialized: bool
    options: tuple[str, ...] = ()
    columns: tuple[Attribute, ...] = ()
    column_comments: tuple[tuple[str, str], ...] = ()
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Function:
    """Routines; ``definition`` is ``pg_get_functiondef`` so a change of body, language,
    volatility, strictness or security is caught; aggregates, which that function refuses,
    get a synthesised ``SFUNC = …, STYPE = …`` text instead."""

    schema: str
    name: str
    arguments: str
    result: str
    kind: str
    definition: str
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sequence:
    """``owned_by`` is ``table.column``, schema-qualified only when the table lives elsewhere."""

    schema: str
    name: str
    data_type: str
    start: int
    increment: int
    owned_by: str | None = None
    minimum: int = 1
    maximum: int = 9223372036854775807
    cache: int = 1
    cycle: bool = False
    unlogged: bool = False
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnumType:
    schema: str
    name: str
    labels: tuple[str, ...]
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Domain:
    """``constraints`` are ``(name, definition)`` pairs in name order."""

    schema: str
    name: str
    base_type: str
    not_null: bool = False
    default: str | None = None
    collation: str | None = None
    constraints: tuple[tuple[str, str], ...] = ()
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompositeType:
    schema: str
    name: str
    attributes: tuple[Attribute, ...]
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class RangeType:
    """``definition`` reads like ``CREATE TYPE … AS RANGE``'s options."""

    schema: str
    name: str
    definition: str
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Extension:
    name: str
    version: str
    schema: str
    comment: str | None = None


@dataclass(frozen=True)
class Namespace:
    """A schema (``CREATE SCHEMA``); named so because :class:`Schema` is the whole model."""

    name: str
    comment: str | None = None
    owner: str = CURRENT_ROLE
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schema:
    """Keys are qualified names, never OIDs: ``public.items``, ``public.items.items_pkey``,
    ``public.f(a integer)``; so two databases built by the same migrations compare equal."""

    tables: Mapping[str, Table] = field(default_factory=dict)
    indexes: Mapping[str, Index] = field(default_factory=dict)
    constraints: Mapping[str, Constraint] = field(default_factory=dict)
    views: Mapping[str, View] = field(default_factory=dict)
    functions: Mapping[str, Function] = field(default_factory=dict)
    sequences: Mapping[str, Sequence] = field(default_factory=dict)
    enums: Mapping[str, EnumType] = field(default_factory=dict)
    triggers: Mapping[str, Trigger] = field(default_factory=dict)
    policies: Mapping[str, Policy] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)
    domains: Mapping[str, Domain] = field(default_factory=dict)
    composites: Mapping[str, CompositeType] = field(default_factory=dict)
    ranges: Mapping[str, RangeType] = field(default_factory=dict)
    extensions: Mapping[str, Extension] = field(default_factory=dict)
    schemas: Mapping[str, Namespace] = field(default_factory=dict)

    def without(self, exclude: Collection[str]) -> Schema:
        """Drop excluded tables with everything that exists only because of them.

        A name matches a table by its bare name or its qualified one, so the default
        ``alembic_version`` works whatever schema Alembic was told to use.
        """
        if not exclude:
            return self
        dropped = {key for key, table in self.tables.items() if is_excluded(table, exclude)}
        if not dropped:
            return self

        def kept(items: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in items.items() if f"{v.schema}.{v.table}" not in dropped}

        return dataclasses.replace(
            self,
            tables={k: v for k, v in self.tables.items() if k not in dropped},
            indexes=kept(self.indexes),
            constraints=kept(self.constraints),
            triggers=kept(self.triggers),
            policies=kept(self.policies),
            rules=kept(self.rules),
            sequences={k: v for k, v in self.sequences.items() if owner_table(v) not in dropped},
        )

    def fingerprint(self, *, exclude: Collection[str] = ("alembic_version",)) -> str:
        """A digest that changes with any schema change and with nothing else."""
        canonical = json.dumps(
            self.without(exclude).to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with keys sorted, so the output can be stored and compared as text."""
        out: dict[str, Any] = {"format": SCHEMA_FORMAT}
        for section in SECTIONS:
            items: Mapping[str, Any] = getattr(self, section)
            out[section] = {key: asdict(items[key]) for key in sorted(items)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Back from :meth:`to_dict`; a snapshot of another format is refused, never misread."""
        fmt = data.get("format", SCHEMA_FORMAT)
        if fmt != SCHEMA_FORMAT:
            raise ValueError(f"schema snapshot has format {fmt!r}; this version reads {SCHEMA_FORMAT!r}")
        sections = {
            section: {key: _load(kind, value) for key, value in data.get(section, {}).items()}
            for section, kind in SECTIONS.items()
        }
        return cls(**sections)


#: Every section of :class:`Schema` and the type of its values, in canonical order.
SECTIONS: dict[str, type] = {
    "schemas": Namespace,
    "extensions": Extension,
    "tables": Table,
    "indexes": Index,
    "constraints": Constraint,
    "triggers": Trigger,
    "policies": Policy,
    "rules": Rule,
    "views": View,
    "functions": Function,
    "sequences": Sequence,
    "enums": EnumType,
    "domains": Domain,
    "composites": CompositeType,
    "ranges": RangeType,
}


def _load(kind: Any, value: Any) -> Any:
    """A dataclass back from its JSON form: lists become tuples again, nested dataclasses
    (columns, attributes) are rebuilt, so the loaded value compares equal to the read one."""
    hints = typing.get_type_hints(kind)
    arguments = {}
    for item in dataclasses.fields(kind):
        if item.name not in value:
            continue
        arguments[item.name] = _convert(hints[item.name], value[item.name])
    return kind(**arguments)


def _convert(hint: Any, value: Any) -> Any:
    if value is None or typing.get_origin(hint) is not tuple:
        return value
    inner = typing.get_args(hint)[0]
    if dataclasses.is_dataclass(inner):
        return tuple(_load(inner, item) for item in value)
    if typing.get_origin(inner) is tuple:
        return tuple(tuple(item) for item in value)
    return tuple(value)


def is_excluded(table: Table, exclude: Collection[str]) -> bool:
    return table.name in exclude or table.qualified in exclude


def owner_table(sequence: Sequence) -> str | None:
    """Qualified name of the table whose column owns the sequence, if any."""
    if not sequence.owned_by:
        return None
    table = sequence.owned_by.rsplit(".", 1)[0]
    return table if "." in table else f"{sequence.schema}.{table}"


def _split_generated(generated: str) -> tuple[str, bool]:
    if generated.endswith(" VIRTUAL"):
        return generated[: -len(" VIRTUAL")], True
    return generated, False


def squash(text: str) -> str:
    """Runs of whitespace folded, so re-indenting a view or function body never reads as a change."""
    return " ".join(text.split())
