"""The benchmark script runs end to end in its quick mode, reports every section and leaves
nothing behind.

No timing assertions: only that each section is there, that what was measured is a positive
number, that skipped parts say why, and that the plot was written. One run (about 30 s on
two cores) covers all of it.
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


def test_quick_benchmark_writes_every_section_and_leaves_nothing(tmp_path: Path) -> None:
    """``bench/run.py --quick`` as a developer runs it, with its own temp folder: every section
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
        "--quick",
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
    for key in (
        "raw_floor",
        "db_branch_pool0",
        "db_branch_module",
        "rollback",
        "truncate",
        "pytest_postgresql",
    ):
        _check_stats(per_test[key], f"per_test.{key}")
    for key, entry in per_test.items():
        if "skipped" in entry:
            assert entry["skipped"], key
        else:
            _check_stats(entry, f"per_test.{key}")
    vs_raw = data["ratios"]["vs_raw_floor"]
    assert vs_raw["raw_floor"] == 1.0
    assert all(value > 0 for value in vs_raw.values())
    matrix = data["ratios"]["matrix"]
    assert all(cell > 0 for row in matrix.values() for cell in row.values())

    suite = data["suite"]
    assert suite["tests"] == 20
    for key in ("db_branch_pool0", "rollback", "pytest_postgresql"):
        for mode in ("n0", "n2"):
            _check_wall(suite["runs"][key][mode], f"suite.{key}.{mode}")
            assert suite["ratio_vs_pytest_postgresql"][key][mode] > 0

    sizes = data["size_growth"]["by_size"]
    assert list(sizes) == ["1mb"]
    for key in ("raw", "manager", "raw_create"):
        _check_stats(sizes["1mb"][key], f"size_growth.{key}")
    assert sizes["1mb"]["source"]["table_bytes"] >= 1024 * 1024

    migrations = data["migration_growth"]["by_count"]
    assert list(migrations) == ["3"]
    assert migrations["3"]["template_build_ms"] > 0
    _check_stats(migrations["3"]["branch_per_test"], "migration_growth.branch")
    _check_stats(migrations["3"]["migrate_per_test"], "migration_growth.migrate")

    assert data["reflink"]["skipped"]  # --quick never formats a file system

    lakebase = data["lakebase"]
    _check_stats(lakebase["per_branch"], "lakebase")
    assert lakebase["api_calls_per_branch"] > 0
