"""A branch kept by a failed test can be looked at after the run, on the embedded default.

The embedded server stops when the run ends; the URL in the failure report must still be
the one to use. So each data folder keeps its port across server starts, and
``dbbranch connect`` starts the server again for as long as someone looks. Tested as the
README shows it: the report's shape, then its two ``dbbranch connect`` commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import (
    AlembicProject,
    postmasters_in,
    readme_block,
    remove_embedded_folder,
    run_inner,
    write_tests,
)

FAILING = """
    def test_fails_after_writing(db_branch):
        db_branch.execute("INSERT INTO widgets (name) VALUES ('kept row')")
        db_branch.commit()
        assert False, "look at my branch"
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    """The embedded default's data folder for this test (short: the socket path is limited)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    made = base / f"dbb-kept-{uuid.uuid4().hex[:8]}"
    yield made
    remove_embedded_folder(made)


def report_pattern(example: str) -> re.Pattern[str]:
    """The README's report line with the branch name and the port left open (both named)."""
    line = next(line for line in example.splitlines() if line.startswith("branch "))
    name = re.search(r"dbb-[a-z0-9-]+", line)
    assert name is not None
    pattern = re.escape(line).replace(re.escape(name.group()), "(?P<name>dbb-[a-z0-9-]+)", 1)
    pattern = pattern.replace(re.escape(name.group()), "(?P=name)")
    return re.compile(re.sub(r"127\\\.0\\\.0\\\.1:\d+", r"127\\.0\\.0\\.1:(?P<port>\\d+)", pattern))


def dbbranch(*args: str, folder: Path, cwd: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = dict(os.environ, DBBRANCH_EMBEDDED_DIR=str(folder))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest_dbbranch.cli", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[call-overload]
    )


def test_a_kept_branch_is_reachable_after_the_run(
    pytester: pytest.Pytester, alembic_project: AlembicProject, folder: Path
) -> None:
    """The report looks as the README shows it; the server is down after the run; then
    ``dbbranch connect NAME`` opens psql on the branch (the failed test's row is there), and
    ``--print`` prints a URL that works until Enter, on the port of the report."""
    write_tests(pytester, "test_keep", FAILING)
    result = run_inner(pytester, None, "--dbbranch-keep=failed", DBBRANCH_EMBEDDED_DIR=str(folder))
    result.assert_outcomes(failed=1)
    example = readme_block("kept-report.txt")
    header = example.splitlines()[0].strip("- ")
    assert any(line.strip("- ") == header and line.startswith("---") for line in result.stdout.lines)
    pattern = report_pattern(example)
    reported = next(filter(None, map(pattern.fullmatch, result.stdout.lines)), None)
    assert reported is not None, result.stdout.str()
    name, port = reported.group("name"), reported.group("port")
    assert postmasters_in(folder) == [], "the server should stop with the run"

    readme_name = re.search(r"dbb-[a-z0-9-]+", example)
    assert readme_name is not None
    psql_command, print_command = (
        [name if word == readme_name.group() else word for word in line.split("#")[0].split()]
        for line in readme_block("connect.sh").strip().splitlines()
    )
    assert psql_command == ["dbbranch", "connect", name]
    psql = dbbranch(*psql_command[1:], folder=folder, cwd=pytester.path)
    out, err = psql.communicate("SELECT name FROM widgets ORDER BY id;\n", timeout=60)
    assert psql.returncode == 0, err
    assert "kept row" in out

    assert print_command == ["dbbranch", "connect", name, "--print"]
    printing = dbbranch(*print_command[1:], folder=folder, cwd=pytester.path)
    try:
        assert printing.stdout is not None and printing.stdin is not None
        url = printing.stdout.readline().strip()
        assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith(f"/{name}"), url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT name FROM widgets ORDER BY id").fetchall() == [
                ("seed",),
                ("kept row",),
            ]
        printing.stdin.write("\n")
        printing.stdin.flush()
        assert printing.wait(timeout=60) == 0
    finally:
        if printing.poll() is None:
            printing.kill()
    assert postmasters_in(folder) == [], "connect should stop the server it started"
    # Last, so that what works is shown first: the port is the data folder's, as in the report.
    assert f"@127.0.0.1:{port}/" in url, f"the report said port {port}; after a restart it is {url}"
