"""A PostgreSQL schema as plain, comparable values.

Two consumers need the same model: the pull-request diff (production snapshot against the
migrated template) and migration checks that compare fingerprints (upgrade twice, or
downgrade then upgrade, must land on the same schema). Both only work if the same
migrations on two databases give equal values, so nothing here may carry an OID, the
database's name or the physical order of catalog rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Part of the canonical form, so fingerprints from an incompatible model never compare equal.
SCHEMA_FORMAT = "dbbranch-schema-v1"


@dataclass(frozen=True)
class Column:
    """One table column; ``generated`` ends in `` VIRTUAL`` for PostgreSQL 18 virtual columns."""

    name: str
    type: str
    nullable: bool
    default: str | None = None
    identity: str | None = None
    generated: str | None = None
    collation: str | None = None

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
        return " ".join(parts)


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: tuple[Column, ...]
    partitioned: bool = False
    comment: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

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


@dataclass(frozen=True)
class Constraint:
    schema: str
    table: str
    name: str
    kind: str
    definition: str


@dataclass(frozen=True)
class View:
    schema: str
    name: str
    definition: str
    materialized: bool


@dataclass(frozen=True)
class Function:
    """Routines; ``definition`` is ``pg_get_functiondef`` so a change of language, volatility
    or security is caught along with the body; aggregates, which that function refuses, get a
    synthesised ``SFUNC = …, STYPE = …`` text instead."""

    schema: str
    name: str
    arguments: str
    result: str
    kind: str
    definition: str


@dataclass(frozen=True)
class Sequence:
    """``owned_by`` is ``table.column``, schema-qualified only when the table lives elsewhere."""

    schema: str
    name: str
    data_type: str
    start: int
    increment: int
    owned_by: str | None = None


@dataclass(frozen=True)
class EnumType:
    schema: str
    name: str
    labels: tuple[str, ...]


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
        return Schema(
            tables={k: v for k, v in self.tables.items() if k not in dropped},
            indexes={k: v for k, v in self.indexes.items() if f"{v.schema}.{v.table}" not in dropped},
            constraints={k: v for k, v in self.constraints.items() if f"{v.schema}.{v.table}" not in dropped},
            views=dict(self.views),
            functions=dict(self.functions),
            sequences={k: v for k, v in self.sequences.items() if owner_table(v) not in dropped},
            enums=dict(self.enums),
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
        for section in _SECTIONS:
            items: Mapping[str, Any] = getattr(self, section)
            out[section] = {key: asdict(items[key]) for key in sorted(items)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Back from :meth:`to_dict`; a snapshot of another format is refused, never misread."""
        fmt = data.get("format", SCHEMA_FORMAT)
        if fmt != SCHEMA_FORMAT:
            raise ValueError(f"schema snapshot has format {fmt!r}; this version reads {SCHEMA_FORMAT!r}")
        tables = {
            key: Table(
                schema=value["schema"],
                name=value["name"],
                columns=tuple(Column(**column) for column in value["columns"]),
                partitioned=value.get("partitioned", False),
                comment=value.get("comment"),
            )
            for key, value in data.get("tables", {}).items()
        }
        enums = {
            key: EnumType(schema=value["schema"], name=value["name"], labels=tuple(value["labels"]))
            for key, value in data.get("enums", {}).items()
        }

        def load(section: str, kind: Any) -> dict[str, Any]:
            return {key: kind(**value) for key, value in data.get(section, {}).items()}

        return cls(
            tables=tables,
            indexes=load("indexes", Index),
            constraints=load("constraints", Constraint),
            views=load("views", View),
            functions=load("functions", Function),
            sequences=load("sequences", Sequence),
            enums=enums,
        )


_SECTIONS = ("tables", "indexes", "constraints", "views", "functions", "sequences", "enums")


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
