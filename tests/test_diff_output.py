"""The schema diff where users get it: a file written by the test run, and ``dbbranch diff``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLE, drop_ours, our_branches, run_inner, write_tests


@pytest.fixture
def example_project(pytester: pytest.Pytester, embedded_url: str) -> pytest.Pytester:
    drop_ours(embedded_url)
    for name in ("migrations", "inventory"):
        shutil.copytree(EXAMPLE / name, pytester.path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("alembic.ini", "snapshot.sql"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    pytester.makeini(
        "[pytest]\ndbbranch_source = snapshot.sql\ndbbranch_alembic_ini = alembic.ini\npythonpath = .\n"
    )
    write_tests(pytester, "test_one", "def test_a(db_branch):\n    pass\n")
    return pytester


EXPECTED_ROWS = [
    "### `public.items`",
    "*column removed* | `inventory_code` | `text NOT NULL` |*",
    "*column added* | `location_code` |*`text NOT NULL` |",
    "*constraint added* | `fk_items_location_code_locations` |*",
]


def test_run_writes_markdown_diff(example_project: pytest.Pytester, embedded_url: str) -> None:
    result = run_inner(example_project, embedded_url, "--dbbranch-schema-diff=out/schema.md", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*schema diff (6 changes, 5 breaking) -> */out/schema.md"])
    text = (example_project.path / "out" / "schema.md").read_text()
    for pattern in EXPECTED_ROWS:
        assert any(__import__("fnmatch").fnmatch(line, pattern) for line in text.splitlines()), pattern
    assert our_branches(embedded_url) == []


def test_run_writes_json_diff(example_project: pytest.Pytester, embedded_url: str) -> None:
    result = run_inner(
        example_project, embedded_url, "--dbbranch-schema-diff=diff.json", "-o", "dbbranch_diff_format=json"
    )
    result.assert_outcomes(passed=1)
    data = json.loads((example_project.path / "diff.json").read_text())
    removed = [c for c in data["changes"] if c["action"] == "removed"]
    assert [(c["kind"], c["name"], c["breaking"]) for c in removed] == [("column", "inventory_code", True)]


def test_cli_diff(example_project: pytest.Pytester, embedded_url: str) -> None:
    def dbbranch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_dbbranch.cli", "diff", "--url", embedded_url, *args],
            capture_output=True,
            text=True,
            cwd=example_project.path,
            timeout=120,
        )

    markdown = dbbranch()
    assert markdown.returncode == 0, markdown.stderr
    # The README shows this exact output for the example project.
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    shown = readme.split("<!-- example-diff -->\n", 1)[1].split("\n<!-- /example-diff -->", 1)[0]
    assert markdown.stdout.strip() == shown.strip()
    assert "⚠️ **6 changes, 5 breaking**" in markdown.stdout
    assert dbbranch("--fail-on-breaking").returncode == 1
    as_json = dbbranch("--format", "json")
    assert json.loads(as_json.stdout)["changes"]
    dbbranch("--output", "pr.md")
    assert (example_project.path / "pr.md").read_text() == markdown.stdout
    assert our_branches(embedded_url) == []


def test_no_changes(pytester: pytest.Pytester, embedded_url: str) -> None:
    drop_ours(embedded_url)
    write_tests(pytester, "test_one", "def test_a(db_branch):\n    pass\n")
    result = run_inner(pytester, embedded_url, "--dbbranch-schema-diff=d.md")
    result.assert_outcomes(passed=1)
    assert "No schema changes" in (pytester.path / "d.md").read_text()
