"""Four CI jobs at once on one Lakebase project: what they cost the service, and what they leave.

    .venv/bin/python bench/lakebase_jobs.py            # about 1-2 minutes on 2 cores

Starts the Lakebase emulator with the service's timing (every operation takes
``--operation-delay`` s, a compute gets its host 0.5 s after its branch) and its branch limit,
on a project whose production branch holds 50 ``customers``. Writes a small suite (an
Alembic project of two revisions, ``--tests`` function-scope tests on ``db_branch``), then
runs ``--jobs`` pytest jobs at once, each ``-n --workers``, each as the same CI identity (a
service principal from ``add_identity``) in its own copy of the project folder, as separate
CI machines would. Prints, per job, the exit code, the tests passed and the wall time; and
in total the API calls by method, the calls per test, the refused creates and the branches
left at the end (only template branches may stay). Exit status 1 if a job failed or a
non-template branch was left.

Refused creates are read from the emulator without changing it: the create POSTs it answered,
minus the create operations that made a branch (its operations stay listed after the branch
is purged). That counts every kind of refusal: limits, conflicts, bad requests, failed
operations.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pytest_dbbranch.conninfo import ServerAddress  # noqa: E402
from pytest_dbbranch.emulator import LakebaseEmulator  # noqa: E402
from pytest_dbbranch.server.embedded import EmbeddedServer  # noqa: E402

PROJECT = "bench"
SOURCE = "bench_jobs_source"
CI_IDENTITY = "ci-bot@example.com"
TEMPLATE_PREFIX = "dbbl-"

ENV_PY = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
connectable = config.attributes.get("connection")
if connectable is None:
    engine = engine_from_config(config.get_section(config.config_ini_section),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connectable, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
from alembic import op
revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
{body}

def downgrade():
    pass
"""

REVISIONS = [
    ("r1", None, ["CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL)"]),
    (
        "r2",
        "r1",
        [
            "ALTER TABLE widgets ADD COLUMN size int NOT NULL DEFAULT 1",
            "INSERT INTO widgets (name) VALUES ('seed')",
        ],
    ),
]

TEST_BODY = '''
def test_{n:02d}(db_branch):
    """Sees the source's customers and the migrated widgets, then changes both: the next
    test on this worker must not see the change."""
    assert db_branch.execute("SELECT count(*) FROM customers").fetchone()[0] == 50
    assert db_branch.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1
    db_branch.execute("DELETE FROM customers WHERE id <= %s", ({n} + 1,))
    db_branch.execute("INSERT INTO widgets (name) VALUES ('t{n}')")
    db_branch.commit()
'''


@dataclass
class Job:
    number: int
    folder: Path
    exit_code: int | None = None
    passed: int = 0
    wall_s: float = 0.0
    output: str = ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="xdist workers per job (-n)")
    parser.add_argument("--tests", type=int, default=12, help="function-scope tests per job")
    parser.add_argument("--operation-delay", type=float, default=1.0, help="seconds per API operation")
    parser.add_argument("--branch-limit", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=170.0, help="seconds a job may take")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder, with each job's output in jobN.log"
    )
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_project(folder: Path, tests: int) -> None:
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "migrations" / "env.py").write_text(ENV_PY)
    (folder / "migrations" / "script.py.mako").write_text("# unused\n")
    (folder / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql+psycopg://nowhere/none\n"
    )
    for revision, down, statements in REVISIONS:
        body = "\n".join(f"    op.execute({s!r})" for s in statements)
        (versions / f"{revision}.py").write_text(REVISION.format(revision=revision, down=down, body=body))
    (folder / "pytest.ini").write_text("[pytest]\ndbbranch_alembic_ini = alembic.ini\n")
    (folder / "test_jobs.py").write_text("".join(TEST_BODY.format(n=n) for n in range(tests)))


def seed_source(address: ServerAddress) -> None:
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SOURCE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE)))
    with psycopg.connect(address.conninfo(dbname=SOURCE), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g")


def job_env(emulator: LakebaseEmulator, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "DBBRANCH_", "PYTEST_"))}
    path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        HOME=str(home),
        PYTHONPATH=os.pathsep.join(path),
        DATABRICKS_HOST=emulator.url,
        DATABRICKS_TOKEN=token,
        DBBRANCH_LAKEBASE_PROJECT=PROJECT,
        DBBRANCH_LAKEBASE_PORT=str(emulator.pg_port),
        DBBRANCH_LAKEBASE_SSLMODE="require",
    )
    return env


def run_job(job: Job, env: dict[str, str], workers: int, timeout: float) -> None:
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        "-n", str(workers), "--durations=3", "test_jobs.py",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=job.folder, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        job.exit_code, job.output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        job.exit_code = -1
        job.output = f"timed out after {timeout:.0f}s\n{exc.stdout or ''}{exc.stderr or ''}"
    job.wall_s = time.monotonic() - started
    found = re.search(r"(\d+) passed", job.output)
    job.passed = int(found.group(1)) if found else 0


def successful_creates(emulator: LakebaseEmulator) -> tuple[int, list[str]]:
    """Create operations that made a branch, and the errors of those that failed: the
    emulator keeps every operation of a project (read under its lock, not changed)."""
    with emulator.lock:
        operations = [
            op for op in emulator.projects[PROJECT].operations.values() if op.kind == "create_branch"
        ]
        made = sum(1 for op in operations if op.done and op.error is None)
        failed = [f"{op.error.get('error_code')}: {op.error.get('message')}" for op in operations if op.error]
    return made, failed


def live_branches(emulator: LakebaseEmulator) -> list[str]:
    return [
        b["name"].rsplit("/", 1)[-1]
        for b in emulator.branches(PROJECT)
        if not b.get("status", {}).get("default")
    ]


def settle(emulator: LakebaseEmulator, seconds: float) -> list[str]:
    """Run branches are deleted without waiting: give their delete operations time to end."""
    deadline = time.monotonic() + seconds
    while True:
        left = live_branches(emulator)
        if all(name.startswith(TEMPLATE_PREFIX) for name in left) or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def report(
    jobs: list[Job], calls: dict[str, int], tests: int, refused: int, left: list[str], failed_ops: list[str]
) -> str:
    lines = ["| job | exit | passed | wall (s) |", "|---|---|---|---|"]
    lines += [f"| {j.number} | {j.exit_code} | {j.passed}/{tests} | {j.wall_s:.1f} |" for j in jobs]
    total = sum(calls.values())
    all_tests = tests * len(jobs)
    lines += [
        "",
        "| total | |",
        "|---|---|",
        f"| tests passed | {sum(j.passed for j in jobs)}/{all_tests} |",
        f"| API calls | {total} |",
        f"| API calls per test | {total / all_tests:.2f} |",
        f"| refused creates | {refused} |",
        f"| branches left | {', '.join(left) or 'none'} |",
        "",
        "| API method | calls |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {count} |" for name, count in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    if failed_ops:
        lines += ["", "Failed create operations: " + "; ".join(sorted(set(failed_ops)))]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="dbbranch-lakebase-jobs-"))
    server_dir = base / f"dbbranch-bench-jobs-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    server = EmbeddedServer(server_dir)
    started = time.monotonic()
    emulator: LakebaseEmulator | None = None
    try:
        address = server.acquire("bench-jobs")
        seed_source(address)
        emulator = LakebaseEmulator(
            address, timing="realistic", operation_delay=args.operation_delay, branch_limit=args.branch_limit
        )
        emulator.start()
        token = emulator.add_identity(CI_IDENTITY)
        emulator.create_project(PROJECT, source_database=SOURCE)
        log(
            f"emulator at {emulator.url}, endpoints on port {emulator.pg_port}; "
            f"{args.operation_delay:g}-s operations"
        )
        jobs = []
        for number in range(1, args.jobs + 1):
            folder = work / f"job{number}"
            write_project(folder, args.tests)
            (work / f"home{number}").mkdir()
            jobs.append(Job(number, folder))
        threads = [
            threading.Thread(
                target=run_job,
                args=(job, job_env(emulator, token, work / f"home{job.number}"), args.workers, args.timeout),
            )
            for job in jobs
        ]
        log(f"{args.jobs} jobs of {args.tests} tests, -n {args.workers} each")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = settle(emulator, 3 * args.operation_delay + 5)
        calls = {kind: count for kind, count in emulator.calls().items() if kind != "GET host_metadata"}
        made, failed_ops = successful_creates(emulator)
        refused = calls.get("POST create_branch", 0) - made
        print(report(jobs, calls, args.tests, refused, left, failed_ops))
        print(f"\nBench wall time {time.monotonic() - started:.1f} s.")
        bad = [job for job in jobs if job.exit_code != 0 or job.passed != args.tests]
        strays = [name for name in left if not name.startswith(TEMPLATE_PREFIX)]
        if args.keep:
            for job in jobs:
                (work / f"job{job.number}.log").write_text(job.output)
        for job in bad:
            print(f"\n--- job {job.number} output (tail) ---\n" + "\n".join(job.output.splitlines()[-40:]))
        if strays:
            print(f"\nNon-template branches left: {', '.join(strays)}")
        return 1 if bad or strays else 0
    finally:
        if emulator is not None:
            emulator.stop()
        with (
            contextlib.suppress(Exception),
            psycopg.connect(server.address().conninfo(), autocommit=True) as conn,
        ):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SOURCE)))
        server.release("bench-jobs")
        shutil.rmtree(server_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
