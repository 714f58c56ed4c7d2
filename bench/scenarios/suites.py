"""Scenarios measured from inside pytest: per-test cost (1-6), the 300-test suite (7) and the
Lakebase emulator (10). Each generates a small pytest project and runs it in a subprocess."""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from typing import Any

from .common import (
    SuiteRun,
    Workspace,
    function_tests,
    log,
    run_pytest,
    summarize_seconds,
    summarize_wall,
    write_suite,
)

POOL_OPTION = "--dbbranch-pool-size"
NO_POOL_NOTE = (
    f"{POOL_OPTION} is not offered by the installed pytest-dbbranch yet: the pool-2 variant is skipped "
    "and pool 0 runs without the option (the plugin's behaviour without a pool)"
)
SUITE_BODY = 'assert {fixture}.execute("SELECT count(*) FROM items").fetchone()[0] == 3000'


@dataclass(frozen=True)
class Alternative:
    """One way of giving each test a clean database."""

    key: str
    label: str
    fixture: str
    conftest: str | None = None
    uses_plugin: bool = False
    args: tuple[str, ...] = ()
    scope: str = "function"
    description: str = ""
    skipped: str | None = None
    #: compared in the ratio matrix (PostgreSQL ways of isolating a test)
    in_matrix: bool = True


@dataclass
class PerTestResults:
    per_test: dict[str, dict[str, Any]] = field(default_factory=dict)
    alternatives: list[Alternative] = field(default_factory=list)


def plugin_ini(ws: Workspace) -> list[str]:
    return [
        f"dbbranch_source = {ws.app / 'snapshot.sql'}",
        f"dbbranch_alembic_ini = {ws.app / 'alembic.ini'}",
    ]


def plugin_env(ws: Workspace) -> dict[str, str]:
    env = ws.base_env()
    env["DBBRANCH_URL"] = ws.address.url()
    return env


def pool_option_available(ws: Workspace) -> bool:
    """Ask the installed plugin itself (``pytest --help``) whether it has the pool option."""
    folder = write_suite(ws.root / "suites" / "help", conftest=None, ini_lines=plugin_ini(ws), files={})
    result = subprocess.run(
        [ws.python, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=folder,
        env=plugin_env(ws),
        capture_output=True,
        text=True,
        check=False,
    )
    return POOL_OPTION in result.stdout


def alternatives(pool: bool) -> list[Alternative]:
    other = ("-p", "no:pytest_postgresql")
    no_plugin = ("-p", "no:dbbranch")
    pool0 = (POOL_OPTION, "0") if pool else ()
    return [
        Alternative(
            "pytest_empty",
            "pytest alone (no database)",
            "",
            args=(*no_plugin, *other),
            description="an empty test without fixtures: what pytest itself costs per test",
            in_matrix=False,
        ),
        Alternative(
            "raw_floor",
            "raw SQL floor (CREATE DATABASE … FILE_COPY)",
            "raw_db",
            conftest="conftest_raw.py",
            args=(*no_plugin, *other),
            description="CREATE DATABASE b TEMPLATE t STRATEGY FILE_COPY, connect; close, DROP DATABASE",
        ),
        Alternative(
            "db_branch_pool0",
            "db_branch, pool 0",
            "db_branch",
            uses_plugin=True,
            args=(*other, *pool0),
            description="pytest-dbbranch, function scope, a branch forked when the test asks for it",
        ),
        Alternative(
            "db_branch_pool2",
            "db_branch, pool 2 (the default up to one worker per core)",
            "db_branch",
            uses_plugin=True,
            args=(*other, POOL_OPTION, "2"),
            description="pytest-dbbranch, function scope, two branches pre-forked (and connected to) "
            "in the background",
            skipped=None if pool else NO_POOL_NOTE,
        ),
        Alternative(
            "db_branch_module",
            "db_branch_module (amortised)",
            "db_branch_module",
            uses_plugin=True,
            args=other,
            scope="module",
            description="pytest-dbbranch, one branch per module shared by its tests; cost divided by tests",
        ),
        Alternative(
            "rollback",
            "db_branch, --dbbranch-isolation rollback",
            "db_branch",
            uses_plugin=True,
            args=(*other, "--dbbranch-isolation", "rollback"),
            description="pytest-dbbranch, one branch per worker, each test in a transaction rolled back",
        ),
        Alternative(
            "truncate",
            "TRUNCATE between tests",
            "truncate_db",
            conftest="conftest_truncate.py",
            args=(*no_plugin, *other),
            description="one session database; TRUNCATE … RESTART IDENTITY CASCADE after every test",
        ),
        Alternative(
            "pytest_postgresql",
            "pytest-postgresql (postgresql fixture)",
            "postgresql",
            conftest="conftest_pytest_postgresql.py",
            args=no_plugin,
            description="pytest-postgresql 10: template from load=[snapshot.sql, alembic], clone per test",
        ),
    ]


def _files(alt: Alternative, tests: int, modules: int) -> dict[str, str]:
    fixture = alt.fixture
    if not fixture:
        return {
            "test_1_measure.py": function_tests("", tests),
            "test_0_warm.py": function_tests("", 1, prefix="test_w_"),
        }
    files = {
        "test_0_warm.py": function_tests(fixture, 1, prefix="test_w_"),
        "test_2_tail.py": function_tests(fixture, 1, prefix="test_t_"),
    }
    if alt.scope == "module":
        for index in range(modules):
            files[f"test_1_measure_{index}.py"] = function_tests(fixture, tests)
    else:
        files["test_1_measure.py"] = function_tests(fixture, tests)
    return files


#: What ``--smoke`` runs: the floor and the plugin's default, enough to exercise every step.
SMOKE_PER_TEST = ("raw_floor", "db_branch_pool0")
SMOKE_SUITE = ("db_branch_pool0",)
SMOKE_SKIPPED = "not run in --smoke mode (only the machinery is checked)"


def run_per_test(
    ws: Workspace, *, tests: int, repeat: int, modules: int, pool: bool, smoke: bool = False
) -> PerTestResults:
    """Scenarios 1-6: setup + teardown around an empty test body, as pytest reports them.

    The warm-up test's setup carries the session fixtures (server connection, template check
    or build) and the tail test's teardown the session finalisers: both are left out.
    """
    out = PerTestResults()
    for alt in alternatives(pool):
        if smoke and alt.key not in SMOKE_PER_TEST:
            alt = dataclasses.replace(alt, skipped=SMOKE_SKIPPED)
        out.alternatives.append(alt)
        if alt.skipped:
            ws.note(f"{alt.label}: skipped: {alt.skipped}")
            out.per_test[alt.key] = {
                "label": alt.label,
                "skipped": alt.skipped,
                "description": alt.description,
            }
            continue
        folder = write_suite(
            ws.root / "suites" / f"per-test-{alt.key}",
            conftest=alt.conftest,
            ini_lines=plugin_ini(ws) if alt.uses_plugin else [],
            files=_files(alt, tests, modules),
        )
        env = plugin_env(ws) if alt.uses_plugin else ws.base_env()
        samples: list[float] = []
        for run in range(repeat):
            result = run_pytest(ws, folder, alt.args, env, label=alt.key)
            if alt.scope == "module":
                samples.extend(sum(values) / len(values) for values in result.by_file().values())
            else:
                samples.extend(result.per_test_seconds())
            log(f"{alt.key}: run {run + 1}/{repeat} done ({result.wall_s:.1f} s wall)")
        entry = summarize_seconds(samples)
        entry.update(label=alt.label, description=alt.description, scope=alt.scope)
        if alt.scope == "module":
            entry["tests_per_module"] = tests
        out.per_test[alt.key] = entry
    return out


def run_suite(
    ws: Workspace, *, tests: int, repeat: int, pool: bool, files: int = 10, smoke: bool = False
) -> dict[str, Any]:
    """Scenario 7: wall time of a whole suite of small function-scope tests, -n 0 and -n 2."""
    by_key = {alt.key: alt for alt in alternatives(pool)}
    chosen = [by_key[key] for key in ("db_branch_pool0", "db_branch_pool2", "rollback", "pytest_postgresql")]
    if smoke:
        skip = dataclasses.replace
        chosen = [alt if alt.key in SMOKE_SUITE else skip(alt, skipped=SMOKE_SKIPPED) for alt in chosen]
    cold = Alternative(
        "db_branch_cold",
        "db_branch, pool 0, template rebuilt (--dbbranch-rebuild)",
        "db_branch",
        uses_plugin=True,
        args=(*by_key["db_branch_pool0"].args, "--dbbranch-rebuild"),
        description="as pool 0, but the migrated template is rebuilt in the run (a first run)",
    )
    chosen.insert(1, cold if not smoke else dataclasses.replace(cold, skipped=SMOKE_SKIPPED))
    per_file = max(1, tests // files)
    layout: dict[str, int] = {}
    remaining = tests
    for index in range(files):
        count = per_file if index < files - 1 else remaining
        if count <= 0:
            break
        layout[f"test_s{index:02d}.py"] = count
        remaining -= count
    runs: dict[str, Any] = {}
    for alt in chosen:
        if alt.skipped:
            runs[alt.key] = {"label": alt.label, "skipped": alt.skipped}
            continue
        body = SUITE_BODY.format(fixture=alt.fixture)
        folder = write_suite(
            ws.root / "suites" / f"suite-{alt.key}",
            conftest=alt.conftest,
            ini_lines=plugin_ini(ws) if alt.uses_plugin else [],
            files={name: function_tests(alt.fixture, count, body=body) for name, count in layout.items()},
        )
        env = plugin_env(ws) if alt.uses_plugin else ws.base_env()
        entry: dict[str, Any] = {"label": alt.label, "description": alt.description}
        for mode, workers in (("n0", "0"), ("n2", "2")) if not smoke else (("n2", "2"),):
            walls: list[float] = []
            per_test: list[float] = []
            for _ in range(repeat):
                result = run_pytest(
                    ws, folder, [*alt.args, "-n", workers], env, label=f"suite {alt.key} -n {workers}"
                )
                walls.append(result.wall_s)
                per_test.extend(result.per_test_seconds())
            entry[mode] = summarize_wall(walls)
            entry[mode]["per_test"] = summarize_seconds(per_test)
            log(f"suite {alt.key} -n {workers}: {entry[mode]['median_s']:.2f} s")
        runs[alt.key] = entry
    ratios: dict[str, dict[str, float]] = {}
    reference = runs.get("pytest_postgresql", {})
    for key, entry in runs.items():
        if "skipped" in entry or "skipped" in reference:
            continue
        ratios[key] = {
            mode: round(entry[mode]["median_s"] / reference[mode]["median_s"], 3)
            for mode in ("n0", "n2")
            if mode in entry
        }
    return {"tests": tests, "files": len(layout), "runs": runs, "ratio_vs_pytest_postgresql": ratios}


def run_lakebase(ws: Workspace, *, tests: int, repeat: int) -> dict[str, Any]:
    """Scenario 10: pytest-dbbranch's Lakebase backend against the local emulator."""
    from pytest_dbbranch.emulator import LakebaseEmulator

    from .common import drop_database, restore_snapshot

    source = "bench_lakebase_source"
    restore_snapshot(ws, source)
    emulator = LakebaseEmulator(ws.address, timing="fast")
    try:
        emulator.start()
        emulator.create_project("bench", source_database=source)
        home = ws.root / "lakebase-home"
        home.mkdir()
        env = ws.base_env()
        env.update(
            HOME=str(home),
            DATABRICKS_HOST=emulator.url,
            DATABRICKS_TOKEN=emulator.token,
            DBBRANCH_LAKEBASE_PROJECT="bench",
            DBBRANCH_LAKEBASE_PORT=str(emulator.pg_port),
            DBBRANCH_LAKEBASE_SSLMODE=emulator.sslmode,
        )
        alt = Alternative("lakebase", "db_branch on the Lakebase emulator", "db_branch", uses_plugin=True)
        folder = write_suite(
            ws.root / "suites" / "lakebase",
            conftest=None,
            ini_lines=[f"dbbranch_alembic_ini = {ws.app / 'alembic.ini'}"],
            files=_files(alt, tests, 1),
        )
        args = ("-p", "no:pytest_postgresql")
        warm = run_pytest(ws, folder, [*args, "-k", "test_w_"], env, label="lakebase warm-up")
        log(f"lakebase: template branch ready ({warm.wall_s:.1f} s)")
        samples: list[float] = []
        calls: dict[str, int] = {}
        branches = 0
        walls: list[float] = []
        for _ in range(repeat):
            before = emulator.calls()
            result: SuiteRun = run_pytest(ws, folder, args, env, label="lakebase")
            after = emulator.calls()
            for name, count in after.items():
                delta = count - before.get(name, 0)
                if delta:
                    calls[name] = calls.get(name, 0) + delta
            branches += len(result.tests)
            samples.extend(result.per_test_seconds())
            walls.append(result.wall_s)
        total = sum(calls.values())
        entry = summarize_seconds(samples)
        return {
            "per_branch": entry,
            "api_calls_per_branch": round(total / branches, 3),
            "api_calls_per_branch_by_kind": {
                name: round(count / branches, 3) for name, count in sorted(calls.items())
            },
            "api_calls_total": total,
            "branches": branches,
            "runs": repeat,
            "tests_per_run": tests,
            "wall": summarize_wall(walls),
            "template_build_run_s": round(warm.wall_s, 3),
            "operation_delay_s": 0.0,
        }
    finally:
        emulator.stop()
        with ws.connect(autocommit=True) as admin:
            drop_database(admin, source)
            # Backing databases whose emulator tag was overwritten by the backend's own tag
            # are refused by the emulator's drop; on this private server every lb_bench_*
            # database is this run's.
            leftovers = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lb\\_bench\\_%'")
            names = [name for (name,) in leftovers.fetchall()]
            for name in names:
                drop_database(admin, name)
            if names:
                ws.note(
                    f"lakebase: the emulator left {len(names)} backing database(s); the bench dropped them"
                )
