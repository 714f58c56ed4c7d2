"""Benchmark of pytest-dbbranch against the other ways of giving each test a clean database.

    .venv/bin/python bench/run.py            # full run, about 10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # a minute or so: tiny sizes, for the smoke test

One PostgreSQL server (the plugin's embedded one, in a fresh folder under /dev/shm) serves
every scenario. The script builds its own suites, databases and Alembic projects, writes a
JSON result and a PNG plot, prints a Markdown report, and removes everything it created.
See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from scenarios import growth, reflink, report, rerun, suites  # noqa: E402
from scenarios.common import Workspace, copy_example_app, create_database, log  # noqa: E402

from pytest_dbbranch import BranchManager  # noqa: E402
from pytest_dbbranch.server.embedded import SERVER_SETTINGS, EmbeddedServer  # noqa: E402
from pytest_dbbranch.settings import resolve  # noqa: E402

SECTIONS = ("per_test", "suite", "rerun", "size_growth", "migration_growth", "reflink", "lakebase")

#: name: (full default, --quick default, --smoke default)
DEFAULTS: dict[str, tuple[Any, Any, Any]] = {
    "tests": (100, 5, 2),
    "repeat": (5, 1, 1),
    "modules": (5, 2, 1),
    "suite_tests": (300, 20, 4),
    "suite_repeat": (3, 1, 1),
    "sizes": ("1,100,1000", "1", "1"),
    "size_reps": (20, 3, 2),
    "migrations": ("10,100,300", "3", "2"),
    "migration_reps": (5, 2, 1),
    "lakebase_tests": (30, 5, 2),
    "rerun_reps": (10, 1, 1),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure pytest-dbbranch against the raw SQL floor and the alternatives.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no reflink: a minute or so")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the machinery only, in seconds: the smallest sizes, the floor and the plugin's default "
        "in the per-test and suite scenarios, no Lakebase (tests/suites/test_bench_smoke.py)",
    )
    parser.add_argument(
        "--tests", type=int, help="measured tests per per-test scenario and run [100; quick 5]"
    )
    parser.add_argument("--repeat", type=int, help="pytest runs per per-test scenario [5; quick 1]")
    parser.add_argument(
        "--modules", type=int, help="modules of --tests tests for db_branch_module [5; quick 2]"
    )
    parser.add_argument("--suite-tests", type=int, help="tests in the suite scenario [300; quick 20]")
    parser.add_argument("--suite-repeat", type=int, help="runs of each suite and -n mode [3; quick 1]")
    parser.add_argument("--sizes", help="source data sizes in MB, comma-separated [1,100,1000; quick 1]")
    parser.add_argument("--size-reps", type=int, help="branches per size [20; quick 3]")
    parser.add_argument("--migrations", help="revision counts, comma-separated [10,100,300; quick 3]")
    parser.add_argument("--migration-reps", type=int, help="per-test migrations timed per count [5; quick 2]")
    parser.add_argument("--lakebase-tests", type=int, help="measured tests per Lakebase run [30; quick 5]")
    parser.add_argument("--rerun-reps", type=int, help="reruns of one test per variant [10; quick 1]")
    parser.add_argument("--no-reflink", action="store_true", help="skip the XFS reflink scenario")
    parser.add_argument(
        "--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)}); the rest are skipped"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json", help="JSON result")
    parser.add_argument("--plot", type=Path, default=HERE / "results.png", help="PNG plot")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report to this file")
    parser.add_argument(
        "--server-dir", type=Path, default=Path("/dev/shm"), help="where the server's fresh data folder goes"
    )
    parser.add_argument(
        "--reflink-dir", type=Path, help="where the XFS image file goes (default: the run's temp folder)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep generated suites (debugging)")
    args = parser.parse_args(argv)
    args.quick = args.quick or args.smoke
    for name, (full, quick, smoke) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else quick if args.quick else full)
    args.sizes = [float(x) for x in str(args.sizes).split(",") if x.strip()]
    args.migrations = [int(x) for x in str(args.migrations).split(",") if x.strip()]
    args.only = [x.strip() for x in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    return args


def storage_of(path: Path) -> str:
    """Filesystem type and mount point holding ``path``, from /proc/mounts."""
    best = ("?", "?", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[2]):
            best = (parts[2], parts[0], point)
    return f"{best[0]} ({best[2]})"


def machine_info(ws: Workspace, server: EmbeddedServer) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with ws.connect() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    versions = {}
    for package in ("pytest-dbbranch", "pytest-postgresql", "pytest", "pytest-xdist", "psycopg", "alembic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres_version": row[0] if row else "?",
        "data_dir": str(server.data),
        "data_dir_storage": storage_of(server.data),
        "server_settings": dict(SERVER_SETTINGS),
        "packages": versions,
        "user": "root" if os.geteuid() == 0 else "unprivileged",
    }


def build_template(ws: Workspace) -> float:
    """The example's snapshot migrated to head, copied to ``bench_template`` for the
    scenarios without the plugin; the plugin's own sealed template stays for its suites."""
    start = time.perf_counter()
    settings = resolve(
        options={
            "url": ws.address.url(),
            "source": str(ws.app / "snapshot.sql"),
            "alembic_ini": str(ws.app / "alembic.ini"),
            "pool_size": "0",
        },
        root=ws.app,
    )
    manager = BranchManager(settings, reap_on_start=False)
    try:
        branch = manager.create(node_id="bench-template")
        try:
            with ws.connect(autocommit=True) as admin:
                create_database(admin, ws.template, branch.name)
        finally:
            manager.release(branch)
    finally:
        manager.close()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="dbbranch-bench-"))
    (root / "tmp").mkdir()
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = str(root / "tmp")  # the plugin's lock files land here, and go with it
    server_home = args.server_dir / f"dbbranch-bench-{os.getpid()}-{secrets.token_hex(3)}"
    server = EmbeddedServer(server_home)
    result: dict[str, Any] = {}
    failures: list[str] = []
    try:
        log(f"starting PostgreSQL in {server_home}")
        address = server.acquire("bench")
        ws = Workspace(root=root, address=address, app=root / "app")
        copy_example_app(ws.app)
        template_s = build_template(ws)
        log(f"migrated template ready ({template_s:.2f} s)")
        pool = suites.pool_option_available(ws)
        if not pool:
            print(f"note: {suites.NO_POOL_NOTE}", flush=True)
        result["machine"] = machine_info(ws, server)
        # Other work on the machine shows up in the numbers: keep the load next to them.
        result["machine"]["load_average_at_start"] = load_at_start
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        settings.update(
            pool_option_available=pool,
            template_build_s=round(template_s, 3),
            schema="examples/inventory (snapshot.sql migrated to head)",
        )
        result["settings"] = settings
        reflink_sizes = [s for s in args.sizes if s >= 100]
        sections: dict[str, Callable[[], dict[str, Any]]] = {
            "per_test": lambda: run_per_test(ws, args, pool, result),
            "suite": lambda: suites.run_suite(
                ws, tests=args.suite_tests, repeat=args.suite_repeat, pool=pool, smoke=args.smoke
            ),
            "rerun": lambda: rerun.run_rerun(
                ws,
                reps=args.rerun_reps,
                server_dir=args.server_dir,
                smoke_server=server_home if args.smoke else None,
            ),
            "size_growth": lambda: growth.run_size_growth(ws, args.sizes, args.size_reps),
            "migration_growth": lambda: growth.run_migration_growth(
                ws, args.migrations, args.size_reps, args.migration_reps
            ),
            "reflink": lambda: reflink.run_reflink(
                ws, reflink_sizes, args.size_reps, args.reflink_dir or (root / "reflink")
            ),
            "lakebase": lambda: suites.run_lakebase(ws, tests=args.lakebase_tests, repeat=args.repeat),
        }
        #: 1-minute load average before and after each section: other work on a shared
        #: machine shows up here before it is mistaken for a difference between alternatives.
        load_by_section: dict[str, list[float]] = {}
        result["machine"]["load_average_by_section"] = load_by_section
        for name, run in sections.items():
            if name not in args.only:
                result[name] = {"skipped": "not selected (--only)"}
                continue
            if name == "lakebase" and args.smoke:
                result[name] = {"skipped": suites.SMOKE_SKIPPED}
                continue
            if name == "reflink" and (args.quick or args.no_reflink):
                reason = "--quick" if args.quick else "--no-reflink"
                print(f"skipped: reflink scenario ({reason})", flush=True)
                result[name] = {"skipped": f"not run ({reason})"}
                continue
            log(f"--- {name}")
            section_start = time.perf_counter()
            load_before = round(os.getloadavg()[0], 2)
            try:
                result[name] = run()
            except Exception as exc:
                traceback.print_exc()
                failures.append(name)
                result[name] = {"skipped": f"failed: {type(exc).__name__}: {str(exc)[:2000]}", "error": True}
            load_by_section[name] = [load_before, round(os.getloadavg()[0], 2)]
            log(f"--- {name} took {time.perf_counter() - section_start:.0f} s")
        if ws.notes:
            result["notes"] = ws.notes
    finally:
        with contextlib.suppress(Exception):
            server.release("bench")
        for _ in range(20):  # a keeper of a kept-server run may still be looking at the folder
            shutil.rmtree(server_home, ignore_errors=True)
            if not server_home.exists():
                break
            time.sleep(0.1)
        tempfile.tempdir = previous_tempdir
        if args.keep_workdir:
            log(f"generated suites kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["settings"]["total_s"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result.setdefault("ratios", report.compute_ratios(result["per_test"]) if "per_test" in result else {})
    report.add_lakebase_ratio(result)
    result["targets"] = report.targets(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    report.plot(result, args.plot)
    text = report.markdown(result)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    log(f"wrote {args.output} and {args.plot} in {result['settings']['total_s']:.0f} s")
    if failures:
        print(f"failed sections: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def run_per_test(
    ws: Workspace, args: argparse.Namespace, pool: bool, result: dict[str, Any]
) -> dict[str, Any]:
    out = suites.run_per_test(
        ws, tests=args.tests, repeat=args.repeat, modules=args.modules, pool=pool, smoke=args.smoke
    )
    result["ratios"] = report.compute_ratios(out.per_test)
    return out.per_test


if __name__ == "__main__":
    sys.exit(main())
