"""The models-match check: do the SQLAlchemy models describe what the migrations build?

Both sides are read through the plugin's own schema model: the migrated template, and a
blank branch on which ``metadata.create_all`` ran. That sees what Alembic's autogenerate
compare misses (enum labels, server defaults, check constraints) and is printed object by
object. Only what a MetaData can describe is compared (tables, their columns, keys,
indexes and checks, enum types), so triggers, functions or grants the migrations add are
not reported as drift.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import CheckFailed, ConfigError
from ..migrations.custom import import_object
from ..settings import Settings
from .walk import HISTORY_TABLES

if TYPE_CHECKING:
    from ..branching.manager import BranchManager
    from ..branching.templates import TemplatePlan
    from ..schema import Schema

#: Attributes a MetaData does not describe (or that create_all cannot reproduce).
_NOT_MODELLED = ("comment", "owner", "grants", "row_security", "force_row_security", "options", "statistics")


def load_metadata(settings: Settings) -> Any:
    """The MetaData named by ``dbbranch_models`` (a declarative base is accepted too)."""
    from sqlalchemy import MetaData

    spec = settings.models or ""
    if ":" not in spec:
        raise ConfigError(f"{settings.origin('models')}: expected 'package.module:metadata', got {spec!r}")
    value = import_object(spec, settings.root, settings.origin("models"))
    metadata = value if isinstance(value, MetaData) else getattr(value, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigError(f"{settings.origin('models')}: {spec} is neither a MetaData nor a declarative base")
    return metadata


def compare_models(manager: BranchManager, settings: Settings, plan: TemplatePlan) -> None:
    from ..schema import diff_schemas, read_schema

    metadata = load_metadata(settings)
    backend = manager.backend(settings)
    with (
        manager.scratch(plan.name, "models-migrated", settings) as address,
        psycopg.connect(address.conninfo(), connect_timeout=10) as conn,
    ):
        migrated = read_schema(conn)
    with (
        manager.scratch(backend.empty_parent, "models-blank", settings) as address,
    ):
        _prepare_blank(address.conninfo(), migrated)
        _create_all(address.sqlalchemy_url(), metadata, settings)
        with psycopg.connect(address.conninfo(), connect_timeout=10) as conn:
            modelled = read_schema(conn)
    changes = diff_schemas(_modelled_part(migrated), _modelled_part(modelled), exclude=HISTORY_TABLES).changes
    if not changes:
        return
    lines = []
    for change in changes:
        where = f" on {change.table}" if change.table and change.table != change.name else ""
        lines.append(
            f"  - {change.kind} {change.name}{where}: migrations: {change.before or 'absent'}; "
            f"models: {change.after or 'absent'}"
        )
    only_migrated = sorted(
        name
        for name in migrated.tables
        if name not in modelled.tables and name.split(".")[-1] not in HISTORY_TABLES
    )
    hint = ""
    if only_migrated and len(only_migrated) * 2 >= max(len(migrated.tables) - 1, 1):
        hint = (
            f"\n  The models lack {len(only_migrated)} of the {len(migrated.tables)} tables the migrations "
            f"create ({', '.join(only_migrated[:5])}{', ...' if len(only_migrated) > 5 else ''}): is the "
            f"module that defines them imported by {(settings.models or '').split(':')[0]}?"
        )
    raise CheckFailed(
        f"the models ({settings.models}) and the migrated schema differ in {len(changes)} places:\n"
        + "\n".join(lines)
        + hint
        + "\n-> add a migration (alembic revision --autogenerate) or fix the models"
    )


def _prepare_blank(conninfo: str, migrated: Schema) -> None:
    """What create_all takes for granted: the schemas and extensions the tables live in."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        for name in getattr(migrated, "schemas", {}) or {}:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))
        for name in getattr(migrated, "extensions", {}) or {}:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name)))


def _create_all(url: str, metadata: Any, settings: Settings) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        metadata.create_all(engine)
    except Exception as exc:
        raise CheckFailed(
            f"metadata.create_all of {settings.models} fails on a blank database, so the models "
            f"cannot be compared: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()


def _modelled_part(schema: Schema) -> Schema:
    """Tables (with columns, keys, indexes, checks) and enum types, without what a MetaData
    does not describe."""
    kept = {"tables", "indexes", "constraints", "enums"}
    sections = {f.name: getattr(schema, f.name) for f in dataclasses.fields(schema)}
    emptied: dict[str, Any] = {name: {} for name in sections if name not in kept}
    tables = {key: _plain(table) for key, table in schema.tables.items()}
    enums = {key: _plain(enum) for key, enum in schema.enums.items()}
    return dataclasses.replace(schema, **emptied, tables=tables, enums=enums)


def _plain(item: Any) -> Any:
    names = {f.name for f in dataclasses.fields(item)}
    defaults = {f.name: f.default for f in dataclasses.fields(item) if f.name in _NOT_MODELLED}
    changes = {name: value for name, value in defaults.items() if value is not dataclasses.MISSING}
    if "columns" in names:
        changes["columns"] = tuple(_plain(column) for column in item.columns)
    return dataclasses.replace(item, **changes) if changes else item
