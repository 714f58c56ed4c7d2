"""Shared pieces: the benchmark's workspace, statistics, pytest runs and database helpers."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pytest_dbbranch import ServerAddress

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inventory"
SUITE_FILES = Path(__file__).resolve().parent / "suite_files"

#: Variables of the caller's shell that would change what a generated suite does.
_FOREIGN_ENV_PREFIXES = ("DBBRANCH_", "DATABRICKS_", "PYTEST_", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def summarize_seconds(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max in milliseconds, and the sample count."""
    if not values:
        raise ValueError("no samples")
    return {
        "median_ms": round(statistics.median(values) * 1000, 4),
        "min_ms": round(min(values) * 1000, 4),
        "max_ms": round(max(values) * 1000, 4),
        "n": len(values),
    }


def summarize_wall(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max in seconds, for whole-suite wall times."""
    return {
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
        "n": len(values),
    }


def timed(function: Any, *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


@dataclass
class Workspace:
    """Everything one benchmark run owns; ``close`` in the caller's ``finally`` removes it."""

    root: Path
    address: ServerAddress
    app: Path
    #: the migrated example database the scenarios without the plugin fork
    template: str = "bench_template"
    python: str = sys.executable
    notes: list[str] = field(default_factory=list)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def admin_conninfo(self) -> str:
        return self.address.conninfo()

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.address.conninfo(dbname), **kwargs)

    def note(self, message: str) -> None:
        log("note: " + message)
        self.notes.append(message)

    def base_env(self) -> dict[str, str]:
        """The caller's environment without anything that steers pytest, the plugin or libpq."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
        env["TMPDIR"] = str(self.tmp)
        # A developer's and a CI cache's runs have their bytecode: kept in the workspace, not
        # beside the sources (a run without it recompiles the plugin and rewrites every test
        # file's assertions, ~0.3 s a process that is nobody's database cost).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        env["BENCH_ADMIN_CONNINFO"] = self.admin_conninfo
        env["BENCH_APP_DIR"] = str(self.app)
        env["BENCH_TEMPLATE"] = self.template
        env["BENCH_HOST"] = str(self.address.host)
        env["BENCH_PORT"] = str(self.address.port)
        env["BENCH_USER"] = str(self.address.user)
        return env


def copy_example_app(target: Path) -> None:
    """The example application's migrations, models and snapshot, as a suite would ship them."""
    target.mkdir(parents=True)
    for name in ("alembic.ini", "snapshot.sql"):
        shutil.copy2(EXAMPLE / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(EXAMPLE / "migrations", target / "migrations", ignore=ignore)
    shutil.copytree(EXAMPLE / "inventory", target / "inventory", ignore=ignore)


# -- generated pytest suites ----------------------------------------------------------------


@dataclass
class SuiteRun:
    wall_s: float
    tests: list[dict[str, Any]]

    def per_test_seconds(self, marker: str = "::test_m_") -> list[float]:
        """setup + teardown of the measured tests (warm-up and tail tests left out)."""
        return [t["setup_s"] + t["teardown_s"] for t in self.tests if marker in t["nodeid"]]

    def by_file(self, marker: str = "::test_m_") -> dict[str, list[float]]:
        grouped: dict[str, list[float]] = {}
        for test in self.tests:
            if marker in test["nodeid"]:
                grouped.setdefault(test["nodeid"].split("::", 1)[0], []).append(
                    test["setup_s"] + test["teardown_s"]
                )
        return grouped


class SuiteFailed(RuntimeError):
    pass


def write_suite(
    folder: Path,
    *,
    conftest: str | None,
    ini_lines: Iterable[str] = (),
    files: Mapping[str, str],
) -> Path:
    """A pytest project: ``pytest.ini``, an optional ``conftest.py`` from ``suite_files``,
    the recorder plugin, and the given test files."""
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\n" + "".join(f"{line}\n" for line in ini_lines))
    shutil.copy2(SUITE_FILES / "bench_recorder.py", folder / "bench_recorder.py")
    if conftest is not None:
        shutil.copy2(SUITE_FILES / conftest, folder / "conftest.py")
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def function_tests(fixture: str, count: int, *, body: str = "pass", prefix: str = "test_m_") -> str:
    lines = [f"def {prefix}{i:04d}({fixture}):\n    {body}\n" for i in range(count)]
    return "\n\n".join(lines)


_WARM: set[Path] = set()

#: Entry-point plugins a generated suite may use; every other installed plugin stays unloaded.
_SUITE_PLUGINS = ("dbbranch", "pytest_postgresql", "xdist")


def plugin_args(args: Sequence[str]) -> list[str]:
    """Load exactly the plugins a suite uses (with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set by
    the caller): whatever else the environment installs (faker's plugin alone costs 0.6 s a
    process here) is the same fixed cost for every alternative and would only dilute their
    ratios. ``-p no:NAME`` in ``args`` keeps a plugin out; xdist only with ``-n``."""
    wanted = []
    for name in _SUITE_PLUGINS:
        if f"no:{name}" in args or (name == "xdist" and "-n" not in args):
            continue
        wanted += ["-p", name]
    return ["-p", "no:cacheprovider", *wanted]


def run_pytest(
    ws: Workspace,
    folder: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    label: str,
    timeout: float = 3600.0,
) -> SuiteRun:
    """Run a generated suite in a fresh interpreter; wall time is measured around the process."""
    record = folder / f"record-{time.monotonic_ns()}.json"
    run_env = dict(env)
    run_env["BENCH_RECORD_FILE"] = str(record)
    run_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # see plugin_args
    # The suite's folder first (its recorder plugin), then the caller's path: a checkout run
    # with PYTHONPATH pointing at it measures that checkout, not an installed copy.
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    argv = [ws.python, "-m", "pytest", "-q", *plugin_args(args), "-p", "bench_recorder", *args]
    if folder not in _WARM:
        # Unmeasured: fills the bytecode cache (the plugin, the rewritten test files), as any
        # earlier run of the suite would have.
        subprocess.run([*argv, "--collect-only"], cwd=folder, env=run_env, capture_output=True, check=False)
        _WARM.add(folder)
    start = time.perf_counter()
    result = subprocess.run(
        argv, cwd=folder, env=run_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode != 0 or not record.exists():
        tail = "\n".join((result.stdout + "\n" + result.stderr).strip().splitlines()[-40:])
        raise SuiteFailed(f"{label}: pytest exited with {result.returncode}\n{tail}")
    data = json.loads(record.read_text())
    record.unlink()
    failed = [t for t in data["tests"] if t["outcome"] != "passed"]
    if failed:
        raise SuiteFailed(f"{label}: {len(failed)} test(s) failed, e.g. {failed[0]}")
    return SuiteRun(wall, data["tests"])


# -- databases ------------------------------------------------------------------------------


def create_database(
    admin: psycopg.Connection[Any], name: str, template: str, strategy: str = "FILE_COPY"
) -> None:
    admin.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
            sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy)
        )
    )


def drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    row = admin.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if row is None:
        return
    if row[0]:
        admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


#: A wide row of random text: ~330 bytes on disk, incompressible, not TOASTed.
_WIDE_COLUMNS = ", ".join(f"c{i} text NOT NULL" for i in range(8))
_WIDE_VALUES = ", ".join("md5(random()::text)" for _ in range(8))


def fill_to_size(address: ServerAddress, dbname: str, size_mb: float) -> dict[str, Any]:
    """Insert generated rows into ``wide`` until the table (with its index) holds ``size_mb``.

    The target is the data, not ``pg_database_size``: an empty PostgreSQL 18 database already
    takes ≈7.5 MB of catalog, so "1 MB of data" could not be reached any other way.
    """
    target = int(size_mb * 1024 * 1024)
    with psycopg.connect(address.conninfo(dbname), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {_WIDE_COLUMNS})"
        )
        rows = 0
        batch = 2000
        while True:
            conn.execute(
                f"INSERT INTO wide ({', '.join(f'c{i}' for i in range(8))}) "
                f"SELECT {_WIDE_VALUES} FROM generate_series(1, %s)",
                (batch,),
            )
            rows += batch
            size = _int(conn.execute("SELECT pg_total_relation_size('wide')").fetchone())
            if size >= target:
                break
            per_row = size / rows
            missing = int((target - size) / per_row) + 1
            batch = max(100, min(missing, 500_000))
        conn.execute("VACUUM ANALYZE wide")
        db_size = _int(conn.execute("SELECT pg_database_size(current_database())").fetchone())
        files = _int(
            conn.execute(
                "SELECT count(*) FROM pg_class WHERE relfilenode <> 0 AND relkind IN ('r','i','t','S','m')"
            ).fetchone()
        )
    return {"rows": rows, "table_bytes": size, "database_bytes": db_size, "relations": files}


def _int(row: tuple[Any, ...] | None) -> int:
    return int(row[0]) if row else 0


def restore_snapshot(ws: Workspace, dbname: str) -> None:
    """Restore the example's ``snapshot.sql`` into a new database with psql."""
    from pytest_dbbranch.server.binaries import client

    with ws.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname)))
    env = dict(ws.base_env())
    env.update(PGHOST=str(ws.address.host), PGPORT=str(ws.address.port), PGUSER=str(ws.address.user))
    subprocess.run(
        [
            client("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dbname,
            "-f",
            str(ws.app / "snapshot.sql"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
