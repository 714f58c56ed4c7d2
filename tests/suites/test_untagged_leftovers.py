"""Nothing unlabelled is ever left for good: ``CREATE DATABASE`` and the tag that marks it
ours cannot be one statement, and a run killed between the two leaves a database with our
generated name and no tag. The next run, ``dbbranch gc`` and ``dbbranch delete`` recognise
it by its name (which ends in a check of itself) once its maker is gone; a look-alike that
somebody named by hand is never touched.

The inner runs kill themselves for real (SIGKILL) at the exact moment: their conftest wraps
the backend's tagging statement.
"""

from __future__ import annotations

import pytest

from pytest_dbbranch import names
from tests.helpers import AlembicProject, create_database, databases, drop_database, our_branches, run_inner
from tests.suites.support import dbbranch, dbbranch_json

KILL_BEFORE_TAG = """
import os
import signal

from pytest_dbbranch.backends.postgres import PostgresBackend

_tag = PostgresBackend._comment


def _killed_before_the_tag(self, name, tag):
    if tag.kind == os.environ.get("KILL_BEFORE_TAG"):
        os.kill(os.getpid(), signal.SIGKILL)  # CREATE DATABASE is done; the tag never comes
    return _tag(self, name, tag)


PostgresBackend._comment = _killed_before_the_tag
"""

TESTS = """
def test_migrated(db_branch):
    assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
"""


def untagged(url: str, prefix: str, *, but: list[str]) -> list[str]:
    """Databases named like ours (``dbbt-``, ``dbb-``) without a tag, except ``but``."""
    return sorted(
        name
        for name, comment in databases(url).items()
        if comment is None and name.startswith(prefix + "-") and name not in but
    )


def test_kills_between_create_and_tag_leave_nothing_for_good(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Killed right after the template's CREATE DATABASE: the next run builds the template
    (no "exists but was not created by pytest-dbbranch") and passes. Killed right after a
    branch's: ``dbbranch gc`` names and removes the leftover. Look-alikes (our name shapes,
    a wrong check) outlive both runs' reapers, gc, and ``dbbranch delete`` (exit 3)."""
    pytester.makeconftest(KILL_BEFORE_TAG)
    pytester.makepyfile(test_app=TESTS)
    real = names.branch_name("pbd0000", None, "function", "t::x")
    lookalikes = [real[:-1] + ("0" if real[-1] != "0" else "1"), "dbbt-0123456789-0123456789abcdef0000"]
    for name in lookalikes:
        create_database(embedded_url, name)
    try:
        killed = run_inner(pytester, embedded_url, KILL_BEFORE_TAG="template")
        assert killed.ret not in (0, 1), killed.stdout.str()
        [template] = untagged(embedded_url, names.TEMPLATE_PREFIX, but=lookalikes)

        result = run_inner(pytester, embedded_url)
        result.assert_outcomes(passed=1)
        assert "was not created by pytest-dbbranch" not in result.stdout.str()
        assert our_branches(embedded_url, "template") == [template]
        assert untagged(embedded_url, names.TEMPLATE_PREFIX, but=lookalikes) == []

        # No warm pool: exactly one branch is being forked when the run kills itself.
        killed = run_inner(pytester, embedded_url, KILL_BEFORE_TAG="branch", DBBRANCH_POOL_SIZE="0")
        assert killed.ret not in (0, 1), killed.stdout.str()
        [branch] = untagged(embedded_url, names.BRANCH_PREFIX, but=lookalikes)

        report = dbbranch_json(capsys, "gc", "--url", embedded_url, "--dry-run")
        assert report["candidates"] == [
            {
                "name": branch,
                "cause": "orphan",
                "reason": "untagged leftover of a process killed while creating it",
            }
        ]
        code, out, err = dbbranch(capsys, "gc", "--url", embedded_url)
        assert code == 0, err
        assert out.splitlines() == [
            f"deleted {branch}  (untagged leftover of a process killed while creating it)"
        ]
        assert untagged(embedded_url, names.BRANCH_PREFIX, but=lookalikes) == []

        for name in lookalikes:
            code, _out, err = dbbranch(capsys, "delete", "--url", embedded_url, name)
            assert code == 3, err
            assert names.generated_kind(name) is None, "a look-alike only if the check is wrong"
        assert set(lookalikes) <= set(databases(embedded_url))
    finally:
        for name in lookalikes:
            drop_database(embedded_url, name)
