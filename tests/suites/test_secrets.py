"""Secrets never reach what a failing run writes, at the most revealing settings: ``-l``
(every frame's local variables), ``--tb=long``, a DEBUG log file and a junit XML report.

The failures are the ones that used to leak: a ``branch_fixture(url=...)`` whose URL holds
the password (its origin quoted the URL), and ``Branch.connect()`` refused by the server
(psycopg's frames, whose locals hold the conninfo, showed under ``-l``). On PostgreSQL the
secret is the ``secretive`` role's password; on Lakebase, the database credentials the
emulator issued to the run (read from the emulator afterwards) and its access token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator
from tests.helpers import SECRET, AlembicProject, drop_ours, item_outcomes, run_inner, write_tests

REVEALING = (
    "-l",
    "--tb=long",
    "-rA",
    "-vv",
    "--junitxml=report.xml",
    "--log-file=log.txt",
    "--log-level=DEBUG",
)

CONFTEST = """
    import os
    from pytest_dbbranch import branch_fixture

    # The URL (password included) comes from the environment, as it would in CI: a test
    # file that spelled it out would print it in its own source lines.
    elsewhere = branch_fixture(url=os.environ["OTHER_URL"], revision="nope")
"""

FAILING = """
    import logging
    import pytest

    def test_factory_with_a_secret_url(elsewhere):
        pass

    @pytest.mark.dbbranch(revision="gone")
    def test_marker_with_a_bad_revision(db_branch):
        pass

    def test_connect_refused(db_branch_info):
        db_branch_info.connect(password="wrong")

    def test_fails_with_everything_in_its_locals(db_branch, db_branch_info, dbbranch_settings):
        logging.getLogger("app").debug("branch %r at %s", db_branch_info, db_branch_info.display_url)
        assert False, db_branch_info
"""


@pytest.fixture
def secret_url(embedded_server: ServerAddress) -> Iterator[str]:
    """The embedded server as the ``secretive`` role, which logs in with ``SECRET``."""
    url = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    ).url()
    drop_ours(url)
    yield url
    drop_ours(url)


def written_by(result: pytest.RunResult, folder: Path) -> dict[str, str]:
    """Everything the run wrote, by where: its output, the junit XML, the log file."""
    return {
        "stdout": result.stdout.str(),
        "stderr": result.stderr.str(),
        "report.xml": (folder / "report.xml").read_text(),
        "log.txt": (folder / "log.txt").read_text(),
    }


def leaks(written: dict[str, str], secrets: list[str]) -> dict[str, list[str]]:
    """Where each secret was written, with the start of the line that holds it."""
    found: dict[str, list[str]] = {}
    for where, text in written.items():
        for line in text.splitlines():
            if any(secret in line for secret in secrets):
                found.setdefault(where, []).append(line.strip()[:80])
    return found


def test_no_password_in_anything_a_failing_run_writes(
    pytester: pytest.Pytester, alembic_project: AlembicProject, secret_url: str
) -> None:
    pytester.makeconftest(CONFTEST)
    write_tests(pytester, "test_s", FAILING)
    result = run_inner(pytester, None, *REVEALING, DBBRANCH_URL=secret_url, OTHER_URL=secret_url)
    outcomes = item_outcomes(result)
    # A factory's or a marker's own settings say nothing about the other tests: their
    # errors fail their test only, and the run goes on.
    assert outcomes == {
        "test_s.py::test_factory_with_a_secret_url": "ERROR",
        "test_s.py::test_marker_with_a_bad_revision": "ERROR",
        "test_s.py::test_connect_refused": "FAILED",
        "test_s.py::test_fails_with_everything_in_its_locals": "FAILED",
    }, result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "Interrupted" not in result.stdout.str()
    written = "\n".join(written_by(result, pytester.path).values())
    # The failures are the revealing ones (the checks below are not vacuous)...
    assert "branch_fixture(url=..., revision='nope'): target revision 'nope' does not exist" in written
    assert (
        "@pytest.mark.dbbranch on test_s.py::test_marker_with_a_bad_revision: target revision 'gone'"
        in written
    )
    assert "cannot connect to branch dbb-" in written and "password authentication failed" in written
    assert "dbbranch_settings = Settings(" in written  # -l showed the locals
    assert "postgresql://secretive:***@127.0.0.1:" in written
    # ... and the password is in none of them.
    assert leaks(written_by(result, pytester.path), [SECRET]) == {}


FAILING_LAKEBASE = """
    import logging

    def test_connect_refused(db_branch, db_branch_info, dbbranch_settings):
        logging.getLogger("app").info("branch %r at %s", db_branch_info, db_branch_info.display_url)
        db_branch_info.connect(password="wrong")
"""


def test_no_lakebase_credential_in_anything_a_failing_run_writes(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    emulator: LakebaseEmulator,
    lakebase_env: dict[str, str],
) -> None:
    """The same on Lakebase, where the password is a database credential the service issues
    (a refused login is retried with a fresh one). The log file is at DEBUG; the terminal's
    captured logs at INFO, so each is checked on its own."""
    write_tests(pytester, "test_s", FAILING_LAKEBASE)
    revealing = [arg for arg in REVEALING if not arg.startswith("--log-level")]
    result = run_inner(
        pytester, None, *revealing, "--log-level=INFO", "--log-file-level=DEBUG", **lakebase_env
    )
    outcomes = item_outcomes(result)
    assert outcomes == {"test_s.py::test_connect_refused": "FAILED"}, result.stdout.str()
    issued = list(emulator.credentials)
    assert len(issued) >= 2, "the refused login was retried with a fresh credential"
    written = written_by(result, pytester.path)
    assert "cannot connect to branch dbb-" in written["stdout"]
    assert "dbbranch_settings = Settings(" in written["stdout"]
    secrets = [*issued, emulator.token]
    # -l, --tb=long, the junit XML:
    assert leaks({k: v for k, v in written.items() if k != "log.txt"}, secrets) == {}
    # the DEBUG log file (databricks-sdk logs every response body at DEBUG):
    assert leaks({"log.txt": written["log.txt"]}, secrets) == {}
