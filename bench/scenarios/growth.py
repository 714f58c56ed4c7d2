"""Scenario 8: how the cost of a branch grows with the source's size and with the number of
migrations. Measured in-process (no pytest): the numbers are per branch, not per test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pytest_dbbranch import BranchManager, ServerAddress
from pytest_dbbranch.settings import resolve

from .common import Workspace, create_database, drop_database, fill_to_size, log, summarize_seconds


def _manager(ws: Workspace, **options: str) -> BranchManager:
    # pool_size 0: time the branch itself, not a hand-over from a background pool (the option
    # is ignored by plugin versions without a pool).
    settings = resolve(options={"url": ws.address.url(), "pool_size": "0", **options}, root=ws.root)
    return BranchManager(settings, reap_on_start=False)


def raw_branch_cycle(
    address: ServerAddress, admin: psycopg.Connection[Any], parent: str, name: str
) -> dict[str, float]:
    """CREATE … FILE_COPY, first connection, close, DROP: each step timed."""
    start = time.perf_counter()
    create_database(admin, name, parent)
    created = time.perf_counter()
    psycopg.connect(address.conninfo(name)).close()
    connected = time.perf_counter()
    admin.execute(f'DROP DATABASE "{name}"')
    dropped = time.perf_counter()
    return {
        "create": created - start,
        "connect": connected - created,
        "drop": dropped - connected,
        "total": dropped - start,
    }


def manager_branch_cycles(ws: Workspace, manager: BranchManager, reps: int, label: str) -> list[float]:
    samples = []
    for index in range(reps):
        start = time.perf_counter()
        branch = manager.create(node_id=f"{label}-{index}")
        branch.connection.execute("SELECT 1")
        manager.release(branch)
        samples.append(time.perf_counter() - start)
    return samples


def run_size_growth(ws: Workspace, sizes: list[float], reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes_mb": sizes, "reps": reps, "by_size": {}}
    with ws.connect(autocommit=True) as admin:
        for size in sizes:
            source = f"bench_size_{_size_label(size)}"
            admin.execute(f'CREATE DATABASE "{source}" TEMPLATE template0')
            manager: BranchManager | None = None
            try:
                start = time.perf_counter()
                info = fill_to_size(ws.address, source, size)
                info["fill_s"] = round(time.perf_counter() - start, 2)
                log(
                    f"size {size} MB: source ready "
                    f"({info['database_bytes'] / 2**20:.0f} MB, {info['fill_s']} s)"
                )
                cycles = [
                    raw_branch_cycle(ws.address, admin, source, "bench_size_branch") for _ in range(reps)
                ]
                entry: dict[str, Any] = {"source": info}
                entry["raw"] = summarize_seconds([c["total"] for c in cycles])
                for step in ("create", "connect", "drop"):
                    entry[f"raw_{step}"] = summarize_seconds([c[step] for c in cycles])
                manager = _manager(ws, source=f"db:{source}", alembic_ini="none")
                build = time.perf_counter()
                template = manager.template()
                entry["manager_template_build_ms"] = round((time.perf_counter() - build) * 1000, 2)
                entry["manager"] = summarize_seconds(manager_branch_cycles(ws, manager, reps, f"size{size}"))
                manager.backend().drop(template)
                out["by_size"][_size_label(size)] = entry
                log(
                    f"size {size} MB: raw {entry['raw']['median_ms']:.1f} ms, "
                    f"BranchManager {entry['manager']['median_ms']:.1f} ms per branch"
                )
            finally:
                if manager is not None:
                    manager.close()
                drop_database(admin, source)
    return out


def _size_label(size: float) -> str:
    return f"{size:g}mb"


# -- migrations -----------------------------------------------------------------------------

_ENV_PY = '''"""Alembic environment of a generated benchmark project."""

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


handed_over = config.attributes.get("connection")
if handed_over is None:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(connection)
else:
    run(handed_over)
'''

_REVISION = '''"""Benchmark revision {number}: one small table."""

import sqlalchemy as sa
from alembic import op

revision = "r{number:04d}"
down_revision = {parent}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "t_{number:04d}",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("label", sa.Text(), nullable=False),
    )


def downgrade():
    op.drop_table("t_{number:04d}")
'''


def write_alembic_project(folder: Path, count: int) -> Path:
    """An Alembic project with ``count`` linear revisions, each creating one table."""
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql+psycopg://unused/unused\n"
    )
    (folder / "migrations" / "env.py").write_text(_ENV_PY)
    for number in range(1, count + 1):
        parent = f'"r{number - 1:04d}"' if number > 1 else "None"
        (versions / f"r{number:04d}_table.py").write_text(_REVISION.format(number=number, parent=parent))
    return folder / "alembic.ini"


def migrate_fresh_database(ws: Workspace, admin: psycopg.Connection[Any], ini: Path, name: str) -> float:
    """What a test pays without templates: a new empty database, migrated to head in-process."""
    start = time.perf_counter()
    create_database(admin, name, "template0")
    engine = create_engine(ws.address.sqlalchemy_url(name), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = Config(str(ini))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    admin.execute(f'DROP DATABASE "{name}"')
    return time.perf_counter() - start


def run_migration_growth(ws: Workspace, counts: list[int], reps: int, migrate_reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "migrations": counts,
        "branch_reps": reps,
        "migrate_reps": migrate_reps,
        "by_count": {},
    }
    with ws.connect(autocommit=True) as admin:
        for count in counts:
            ini = write_alembic_project(ws.root / "alembic-projects" / f"m{count}", count)
            manager = _manager(ws, source="empty", alembic_ini=str(ini))
            try:
                start = time.perf_counter()
                template = manager.template()
                build_s = time.perf_counter() - start
                branch = manager_branch_cycles(ws, manager, reps, f"mig{count}")
                manager.backend().drop(template)
            finally:
                manager.close()
            migrate = [
                migrate_fresh_database(ws, admin, ini, "bench_migrate_fresh") for _ in range(migrate_reps)
            ]
            branch_stats = summarize_seconds(branch)
            migrate_stats = summarize_seconds(migrate)
            saved = migrate_stats["median_ms"] - branch_stats["median_ms"]
            entry = {
                "template_build_ms": round(build_s * 1000, 2),
                "branch_per_test": branch_stats,
                "migrate_per_test": migrate_stats,
                "per_test_ratio_migrate_vs_branch": round(
                    migrate_stats["median_ms"] / branch_stats["median_ms"], 2
                ),
                "break_even_tests": round(build_s * 1000 / saved, 2) if saved > 0 else None,
            }
            out["by_count"][str(count)] = entry
            log(
                f"{count} migrations: template build {entry['template_build_ms']:.0f} ms, branch "
                f"{branch_stats['median_ms']:.1f} ms/test, "
                f"migrate per test {migrate_stats['median_ms']:.0f} ms/test"
            )
    return out
