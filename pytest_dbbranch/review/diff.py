"""The schema difference a pull request makes: the source (production) against the migrated
template, each read on a throwaway copy."""

from __future__ import annotations

import psycopg

from ..branching.manager import BranchManager
from ..branching.sources import resolve_parent
from ..schema import Schema, SchemaDiff, diff_schemas, read_schema
from ..settings import Settings


def schema_diff(manager: BranchManager, settings: Settings | None = None) -> SchemaDiff:
    """How the migrated template differs from the source, for reviewers."""
    settings = settings or manager.settings
    plan = manager.plan(settings)
    backend = manager.backend(settings)
    source = resolve_parent(plan.source, backend, run_id=manager.run_id, stats=manager.stats)
    old = schema_of(manager, source, settings, label="diff-source")
    new = schema_of(manager, plan.name, settings, label="diff-template")
    return diff_schemas(old, new)


def schema_of(manager: BranchManager, parent: str, settings: Settings, *, label: str) -> Schema:
    """The schema of ``parent``, read on a throwaway branch of it."""
    with manager.scratch(parent, label, settings) as address, psycopg.connect(address.conninfo()) as conn:
        return read_schema(conn)
