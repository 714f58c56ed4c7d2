"""A configuration mistake is reported once, before any test runs, as a usage error (exit
4), with or without xdist; a template that cannot be built stops the run after the first
test that meets it (exit 1). Before, every test of the run failed with the same message,
each after its own attempt. A suite that asks for no branch is not affected at all.

The message texts are checked in process (``tests/integration/test_preflight.py``); here is
what the run does with them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import AlembicProject, remove_embedded_folder, run_inner, write_tests

#: Four tests that want a branch and one that does not; each leaves a file when it runs.
SUITE = """
    import pytest
    from pathlib import Path

    @pytest.mark.parametrize("i", range(4))
    def test_wants_a_branch(db_branch, i):
        Path(f"ran-db-{i}").touch()

    def test_needs_no_database():
        Path("ran-plain").touch()
"""


def missing_alembic_ini(project: AlembicProject) -> tuple[dict[str, str], str]:
    return {"DBBRANCH_ALEMBIC_INI": "conf/alembic.ini"}, (
        f"environment variable DBBRANCH_ALEMBIC_INI: Alembic config file {project.root}/conf/alembic.ini "
        "does not exist"
    )


def missing_source_file(project: AlembicProject) -> tuple[dict[str, str], str]:
    return {"DBBRANCH_SOURCE": "dumps/prod.sql"}, (
        f"environment variable DBBRANCH_SOURCE: the source dump file {project.root}/dumps/prod.sql "
        "does not exist"
    )


def unknown_revision(project: AlembicProject) -> tuple[dict[str, str], str]:
    return {
        "DBBRANCH_REVISION": "nope"
    }, "environment variable DBBRANCH_REVISION: target revision 'nope' does not exist"


MISTAKES = [missing_alembic_ini, missing_source_file, unknown_revision]


@pytest.fixture(scope="module")
def shm_folder() -> Iterator[Path]:
    """Where the embedded default would start its server (none must start here)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    folder = base / f"dbbranch-config-{uuid.uuid4().hex[:8]}"
    yield folder
    remove_embedded_folder(folder)


@pytest.mark.parametrize(
    ("mistake", "workers"),
    [(mistake, []) for mistake in MISTAKES] + [(unknown_revision, ["-n", "2"])],
    ids=[f"{mistake.__name__}" for mistake in MISTAKES] + ["unknown_revision-xdist"],
)
def test_a_wrong_setting_is_one_usage_error_before_any_test(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    shm_folder: Path,
    mistake: Callable[[AlembicProject], tuple[dict[str, str], str]],
    workers: list[str],
) -> None:
    """Exit 4, the message (naming where the setting came from), no test run, not even the
    one that needs no database, and no server started (its folder holds no cluster)."""
    env, message = mistake(alembic_project)
    write_tests(pytester, "test_suite", SUITE)
    result = run_inner(pytester, None, *workers, DBBRANCH_EMBEDDED_DIR=str(shm_folder), **env)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert f"pytest-dbbranch: {message}" in output
    assert sorted(path.name for path in pytester.path.glob("ran-*")) == [], output
    assert "ERROR at setup" not in output and "Traceback" not in output, output
    assert not list(shm_folder.glob("pg*/data")), "a server was started to find a configuration error"


def test_a_failing_migration_stops_each_worker_after_one_error(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """The template cannot be built: the xdist controller, which builds it before any test,
    stops the run once (exit 1) with the migration's error, instead of every test failing in
    turn; no worker tries again."""
    alembic_project.add("r3", "r2", "UPDATE widgets SET nme = 'x'")
    write_tests(pytester, "test_suite", SUITE.replace("range(4)", "range(8)"))
    result = run_inner(pytester, embedded_url, "-n", "2", "-p", "no:randomly")
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    assert "no tests ran" in output, output
    assert len(list(pytester.path.glob("ran-db-*"))) == 0
    assert output.count("pytest-dbbranch: Alembic migration failed at revision r3") == 1, output
    assert alembic_project.runs == 1


PLAIN = """
    import sys

    HEAVY = ("psycopg", "sqlalchemy", "alembic", "filelock")

    def test_a():
        assert sorted(m for m in sys.modules if m.split(".")[0] in HEAVY) == []

    def test_b():
        pass
"""


def test_a_suite_that_asks_for_no_branch_ignores_broken_settings(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Wrong settings everywhere, no test wants a branch: the run passes as if the plugin
    were absent: nothing checked, no server, no ``dbbranch`` summary, none of the branch
    machinery's libraries loaded. (pytest-postgresql, another plugin, imports psycopg
    itself: it is disabled here.)"""
    write_tests(pytester, "test_plain", PLAIN)
    folder = tmp_path / "embedded"
    result = run_inner(
        pytester,
        None,
        "-p",
        "no:postgresql",
        DBBRANCH_EMBEDDED_DIR=str(folder),
        DBBRANCH_ALEMBIC_INI="conf/missing.ini",
        DBBRANCH_SOURCE="dumps/missing.sql",
        DBBRANCH_REVISION="nope",
    )
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert not re.search(r"=+ dbbranch =+", result.stdout.str()), "a dbbranch summary"
    assert not folder.exists()


def test_an_empty_url_variable_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DBBRANCH_URL: ${{ secrets.DB_URL }}`` with the secret unset: the run must not
    silently test against the embedded server instead."""
    write_tests(pytester, "test_k", "def test_a(db_branch):\n    pass\n")
    monkeypatch.setenv("DBBRANCH_URL", "")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*environment variable DBBRANCH_URL is set but empty*"])
    assert os.environ["DBBRANCH_URL"] == ""
