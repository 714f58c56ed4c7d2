"""The benchmark script runs end to end in its smoke mode, reports every section and leaves
nothing behind.

No timing assertions: only that each section is there, that what was measured is a positive
number, that skipped parts say why, and that the plot was written. ``--smoke`` runs each
scenario's machinery once at the smallest size (the floor and the plugin's default where a
scenario compares many alternatives): about 12 s on two cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO

SECTIONS = (
    "machine",
    "settings",
    "per_test",
    "suite",
    "rerun",
    "size_growth",
    "migration_growth",
    "reflink",
    "lakebase",
)


def _check_stats(entry: dict[str, Any], where: str) -> None:
    for key in ("median_ms", "min_ms", "max_ms"):
        assert entry[key] > 0, f"{where}: {key} = {entry[key]}"
    assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"], where
    assert entry["n"] > 0, where


def _check_wall(entry: dict[str, Any], where: str) -> None:
    for key in ("median_s", "min_s", "max_s"):
        assert entry[key] > 0, f"{where}: {key} = {entry[key]}"


def test_smoke_benchmark_writes_every_section_and_leaves_nothing(tmp_path: Path) -> None:
    """``bench/run.py --smoke`` as a developer runs it, with its own temp folder: every section
    is measured (or says why not), the report and plot are written, and neither the server's
    data folder nor the work folder survive."""
    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    output, plot = out / "r.json", out / "r.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBBRANCH_", "DATABRICKS_"))}
    env["TMPDIR"] = str(temp)
    argv = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--smoke",
        "--output",
        str(output),
        "--plot",
        str(plot),
    ]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert plot.is_file() and plot.stat().st_size > 0
    assert "| scenario |" in result.stdout  # the Markdown report

    match = re.search(r"starting PostgreSQL in (\S+)", result.stdout + result.stderr)
    assert match, result.stdout[-2000:]
    assert not Path(match.group(1)).exists()
    assert list(temp.iterdir()) == []

    data = json.loads(output.read_text())
    for section in SECTIONS:
        assert section in data, section
    assert data["machine"]["cores"] > 0
    assert data["machine"]["postgres_version"]

    per_test = data["per_test"]
    for key in ("raw_floor", "db_branch_pool0"):
        _check_stats(per_test[key], f"per_test.{key}")
    for key, entry in per_test.items():
        if "skipped" in entry:
            assert entry["skipped"], key
        else:
            _check_stats(entry, f"per_test.{key}")
    vs_raw = data["ratios"]["vs_raw_floor"]
    assert vs_raw["raw_floor"] == 1.0
    assert all(value > 0 for value in vs_raw.values())

    suite = data["suite"]
    assert suite["tests"] == 4
    _check_wall(suite["runs"]["db_branch_pool0"]["n2"], "suite.db_branch_pool0.n2")
    assert all(entry["skipped"] for key, entry in suite["runs"].items() if key != "db_branch_pool0")

    rerun = data["rerun"]
    _check_wall(rerun["bare"], "rerun.bare")
    _check_wall(rerun["idle"], "rerun.idle")
    assert rerun["idle_runs_attached"] == 1, "the rerun did not attach to the running server"
    assert rerun["stop"]["skipped"]

    sizes = data["size_growth"]["by_size"]
    assert list(sizes) == ["1mb"]
    for key in ("raw", "manager", "raw_create"):
        _check_stats(sizes["1mb"][key], f"size_growth.{key}")
    assert sizes["1mb"]["source"]["table_bytes"] >= 1024 * 1024

    migrations = data["migration_growth"]["by_count"]
    assert list(migrations) == ["2"]
    assert migrations["2"]["template_build_ms"] > 0
    _check_stats(migrations["2"]["branch_per_test"], "migration_growth.branch")
    _check_stats(migrations["2"]["migrate_per_test"], "migration_growth.migrate")

    assert data["reflink"]["skipped"]  # --smoke never formats a file system
    assert data["lakebase"]["skipped"]
