"""Templates are built before the tests, by the process that runs the session (the xdist
controller here), one progress line per step; workers only fork. And a migration check that
fails is located at the migration, where ``--junitxml`` and CI annotations send the reader.

One inner run shows all of it, as the README's progress example describes: a dump as the
source, three revisions named and titled as in that example, ``-n 2``, the migration checks
on (the newest revision has no downgrade, so ``reversible`` fails). How a failing build
stops the run is in ``test_config_once.py``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.helpers import (
    AlembicProject,
    create_database,
    drop_database,
    pg_dump,
    readme_block,
    run_inner,
    write_tests,
)
from tests.suites.support import check_outcomes

#: What the revisions do; their ids and titles are the README example's.
REVISIONS = [
    (
        (
            "CREATE TABLE customers (id serial PRIMARY KEY, full_name text NOT NULL)",
            "CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers)",
        ),
        ("DROP TABLE orders", "DROP TABLE customers"),
    ),
    (
        (
            "ALTER TABLE customers ADD COLUMN first_name text, ADD COLUMN last_name text",
            "UPDATE customers SET first_name = split_part(full_name, ' ', 1),"
            " last_name = split_part(full_name, ' ', 2)",
        ),
        ("ALTER TABLE customers DROP COLUMN first_name, DROP COLUMN last_name",),
    ),
    (("ALTER TABLE customers DROP COLUMN full_name",), ()),  # no downgrade
]

CONFTEST = """
    import psycopg
    import pytest

    def pytest_runtest_setup(item):
        # In the process that runs the item, before its fixtures: is a sealed template there?
        with psycopg.connect(item.config.getoption("dbbranch_url")) as conn:
            (sealed,) = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbbt-%' AND datistemplate"
            ).fetchone()
        with open("sealed-at-setup.txt", "a") as f:
            f.write(f"{sealed}\\n")

    @pytest.hookimpl(tryfirst=True, hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        # How pytest-github-actions-annotate-failures places its annotation: the report's
        # location, 1-based, for a failure reported as text (as migration checks are).
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.failed and isinstance(report.longrepr, str):
            path, line, _ = report.location
            with open("annotations.txt", "a") as f:
                f.write(f"::error file={path},line={line + 1}\\n")
"""

TESTS = """
    import pytest

    @pytest.mark.parametrize("i", range(4))
    def test_reads_the_snapshot(db_branch, i):
        assert db_branch.execute("SELECT count(*) FROM audit_log").fetchone() == (120,)
        assert db_branch.execute("SELECT first_name FROM customers").fetchall() == []
"""


def progress_patterns(example: str) -> list[re.Pattern[str]]:
    """The README's progress lines, with what differs between runs left open: sizes, times,
    database names."""
    patterns = []
    for line in example.strip().splitlines():
        pattern = re.escape(line)
        pattern = re.sub(r"dbb([st])\\-[0-9a-f\\-]+", r"dbb\1-[0-9a-f-]+", pattern)
        pattern = re.sub(r"\d+(\\\.\d+)?\\ (MB|kB)", r"[\\d.]+\\ (MB|kB)", pattern)
        pattern = re.sub(r"\d+\\\.\d\\ s", r"\\d+\\.\\d\\ s", pattern)
        patterns.append(re.compile(pattern))
    return patterns


def snapshot(url: str, target: str) -> None:
    """A small production dump: an audit table of 120 rows, nothing migrated yet."""
    name = "dbbranch_tests_prebuild_prod"
    create_database(
        url,
        name,
        "CREATE TABLE audit_log (id int PRIMARY KEY, note text)",
        "INSERT INTO audit_log SELECT g, repeat('x', 200) FROM generate_series(1, 120) g",
    )
    try:
        with open(target, "wb") as out:
            out.write(pg_dump(url, name, "--no-owner", "--no-privileges"))
    finally:
        drop_database(url, name)


def test_templates_are_built_before_the_tests_and_checks_point_at_migrations(
    pytester: pytest.Pytester, embedded_url: str
) -> None:
    """Under ``-n 2``: the README's progress lines, in order, before the first test is
    scheduled; every item (in either worker) finds the template sealed before its setup, and
    the run built it once. The failing ``reversible`` check is located at the revision's
    ``def downgrade`` line in the JUnit XML (``file``/``line``) and in the annotation."""
    example = readme_block("progress.txt")
    titles = re.findall(r"migrating to head: (\w+) (.+) \(\d+ of \d+\)", example)
    project = AlembicProject(pytester.path)
    down = None
    for (revision, title), (statements, undo) in zip(titles, REVISIONS, strict=True):
        path = project.add(revision, down, *statements, undo=undo)
        path.write_text(f'"""{title}"""\n' + path.read_text())
        down = revision
    newest = project.versions / f"{titles[-1][0]}.py"
    downgrade_line = 1 + newest.read_text().splitlines().index("def downgrade():")
    snapshot(embedded_url, str(pytester.path / "snapshot.sql"))
    (pytester.path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ndbbranch_source = "snapshot.sql"\n'
    )
    write_tests(pytester, "conftest", CONFTEST)
    write_tests(pytester, "test_snapshot", TESTS)

    result = run_inner(
        pytester,
        embedded_url,
        "-n",
        "2",
        "-rA",
        "--dbbranch-check-migrations",
        "-k",
        "reads_the_snapshot or reversible",  # the other checks cost time and show nothing here
        "--junitxml=junit.xml",
        "-o",
        "junit_family=xunit1",
    )
    lines = result.stdout.lines
    found = []
    for pattern in progress_patterns(example):
        matches = [n for n, line in enumerate(lines) if pattern.fullmatch(line)]
        assert matches, f"no progress line like {pattern.pattern}:\n{result.stdout.str()}"
        found.append(matches[0])
    assert found == sorted(found), "progress lines out of order"
    scheduled = next(n for n, line in enumerate(lines) if re.search(r"2 workers \[\d+ items\]", line))
    assert found[-1] < scheduled, "the template was reported ready after the tests were scheduled"
    sealed = (pytester.path / "sealed-at-setup.txt").read_text().split()
    assert len(sealed) == 5 and "0" not in sealed, sealed  # 4 tests and the check
    result.stdout.fnmatch_lines(["*templates: * cache hits, 1 built, 1 source dumps restored*"])

    assert check_outcomes(result) == {"reversible": "FAILED"}, result.stdout.str()
    relative = f"migrations/versions/{newest.name}"
    cases = {case.get("name"): case for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    assert (cases["reversible"].get("file"), cases["reversible"].get("line")) == (
        relative,
        str(downgrade_line - 1),  # pytest's locations are 0-based
    )
    assert (pytester.path / "annotations.txt").read_text().splitlines() == [
        f"::error file={relative},line={downgrade_line}"
    ]


def test_under_pytest_timeout_the_build_is_not_inside_a_test(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """A migration slower than the per-test timeout: the build happens before the tests, so
    no test times out (before, every test retried the build and timed out)."""
    pytest.importorskip("pytest_timeout", reason="pytest-timeout is not installed")
    alembic_project.add("r3", "r2", "SELECT pg_sleep(3)")
    write_tests(
        pytester,
        "test_quick",
        "import pytest\n\n@pytest.mark.parametrize('i', range(3))\ndef test_q(db_branch, i):\n    pass\n",
    )
    result = run_inner(pytester, embedded_url, "--timeout=2", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
