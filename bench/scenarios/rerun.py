"""Scenario 11: the edit-run loop. Rerunning one test of a small project (the example's three
Alembic revisions and its dump source) with a warm template, against the same pytest run
without the plugin.

Unlike the other scenarios this one uses the plugin's *embedded* server (no URL), in a folder
of its own: starting, stopping and attaching to it is what is measured. Three variants, each
run ``reps`` times after one unmeasured warm-up (which builds the template and fills the
bytecode cache):

* ``bare``: ``-p no:dbbranch`` and a test without a database: what pytest itself costs;
* ``idle``: the plugin with ``dbbranch_embedded_idle`` (the local default): the server
  outlives each run and the next one attaches to it;
* ``stop``: ``dbbranch_embedded_idle = 0`` (the default under ``CI``): each run starts and
  stops the server, as every run did before the idle server.

Wall time of the pytest process, from a fresh interpreter with a warm bytecode cache (kept
in the workspace, not next to the sources) -- what a developer's rerun costs.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import Workspace, log, summarize_wall

TEST_WITH_DB = 'def test_one(db_branch):\n    assert db_branch.execute("SELECT 1").fetchone() == (1,)\n'
TEST_BARE = "def test_one():\n    assert (1,) == (1,)\n"


def _project(ws: Workspace) -> Path:
    folder = ws.root / "suites" / "rerun"
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text(
        "[pytest]\n"
        f"dbbranch_source = {ws.app / 'snapshot.sql'}\n"
        f"dbbranch_alembic_ini = {ws.app / 'alembic.ini'}\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    (folder / "test_db.py").write_text(TEST_WITH_DB)
    (folder / "test_bare.py").write_text(TEST_BARE)
    return folder


def _env(ws: Workspace, embedded: Path, idle: str) -> dict[str, str]:
    # With a bytecode cache, as a developer's rerun has, and the environment's other pytest
    # plugins (unlike the suites): the issue's own baseline, pytest with what is installed.
    env = ws.base_env()
    env["DBBRANCH_EMBEDDED_DIR"] = str(embedded)
    env["DBBRANCH_EMBEDDED_IDLE"] = idle
    env.pop("CI", None)
    return env


def _run(ws: Workspace, folder: Path, args: list[str], env: dict[str, str]) -> float:
    argv = [ws.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:pytest_postgresql", *args]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"rerun scenario: pytest exited with {result.returncode}\n{tail}")
    return wall


def _postmaster(embedded: Path) -> int | None:
    for pidfile in embedded.glob("pg*/data/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
    return None


def run_rerun(
    ws: Workspace, *, reps: int, server_dir: Path, smoke_server: Path | None = None
) -> dict[str, Any]:
    """``smoke_server`` (``--smoke``): one run of ``bare`` and ``idle`` only, attaching to
    that (already running) server folder, where the bench built the same template."""
    from pytest_dbbranch.server.embedded import EmbeddedServer

    folder = _project(ws)
    embedded = smoke_server or server_dir / f"{ws.root.name}-rerun"
    variants = {
        "bare": (["-p", "no:dbbranch", "test_bare.py"], "0"),
        "idle": (["test_db.py"], "600"),
        "stop": (["test_db.py"], "0"),
    }
    if smoke_server is not None:
        del variants["stop"]  # the bench's own server never stops under a run
    walls: dict[str, list[float]] = {key: [] for key in variants}
    attached = 0
    try:
        for key in ("bare", "stop", "idle") if smoke_server is None else ():
            args, idle = variants[key]  # warm-up (template, .pyc files); the server stays up
            _run(ws, folder, args, _env(ws, embedded, idle))
        # The edit-run loop, bare and kept-server runs interleaved (so a burst of load
        # elsewhere on the machine hits both alike), the server never stopped in between:
        # a restart would hand the next run a server with cold caches, which a developer's
        # loop never sees.
        for _ in range(reps):
            for key in ("bare", "idle"):
                args, idle = variants[key]
                before = _postmaster(embedded)
                walls[key].append(_run(ws, folder, args, _env(ws, embedded, idle)))
                if key == "idle" and before is not None and _postmaster(embedded) == before:
                    attached += 1
        if "stop" in variants:
            args, idle = variants["stop"]
            _run(ws, folder, args, _env(ws, embedded, idle))  # stops the kept server: each run starts one
            for _ in range(reps):
                walls["stop"].append(_run(ws, folder, args, _env(ws, embedded, idle)))
                if _postmaster(embedded) is not None:
                    raise RuntimeError("rerun scenario: dbbranch_embedded_idle=0 left the server running")
    finally:
        if smoke_server is None:
            with contextlib.suppress(Exception):
                server = EmbeddedServer(embedded)  # idle 0: stops it unless a run still uses it
                server.acquire("bench-rerun-cleanup")
                server.release("bench-rerun-cleanup")
            shutil.rmtree(embedded, ignore_errors=True)  # a keeper left behind stops on its own
    out: dict[str, Any] = {key: summarize_wall(values) for key, values in walls.items()}
    bare_s, kept_s = statistics.median(walls["bare"]), statistics.median(walls["idle"])
    out.update(reps=reps, idle_runs_attached=attached, overhead_idle_s=round(kept_s - bare_s, 3))
    out["target_overhead_s"] = 0.15
    if "stop" in walls:
        out["overhead_stop_s"] = round(statistics.median(walls["stop"]) - bare_s, 3)
    else:
        out["stop"] = {"skipped": "not run in --smoke mode"}
    log(f"rerun: pytest alone {bare_s:.2f} s, with the plugin and a kept server {kept_s:.2f} s")
    return out
