"""The plugin installed where it cannot work: a machine without libpq, a platform without
``pwd``. A suite that never asks for a branch runs as if the plugin were absent; one that
does gets one error naming what to install.

libpq is hidden for real: the inner run happens in a private mount namespace where the
system's libpq is a bind mount of ``/dev/null``, and ``PSYCOPG_IMPL=python`` makes psycopg
load that library instead of the copy bundled with ``psycopg[binary]``. The inner runs
disable pytest-postgresql (``-p no:postgresql``): that other plugin imports psycopg when
pytest loads it, which is its own affair.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    AlembicProject,
    in_private_mounts,
    private_mounts_or_skip,
    run_inner,
    write_tests,
)

UNRELATED = """
    import sys

    HEAVY = ("psycopg", "sqlalchemy", "alembic", "filelock")

    def test_unrelated():
        assert sorted(m for m in sys.modules if m.split(".")[0] in HEAVY) == []

    def test_unrelated_too():
        assert 1 + 1 == 2
"""

WANTS_A_BRANCH = """
    def test_a(db_branch):
        pass

    def test_b(db_branch):
        pass

    def test_without_a_database():
        pass
"""

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:postgresql"]


@pytest.fixture(scope="module")
def libpq() -> Path:
    """The system's libpq file (the real file behind the ``libpq.so.5`` link)."""
    private_mounts_or_skip()
    soname = ctypes.util.find_library("pq")
    if soname is None:
        pytest.skip("no system libpq to hide (ctypes.util.find_library('pq') finds none)")
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.startswith(soname + " ") and Path(path).exists():
            return Path(path).resolve()
    pytest.skip(f"{soname} is not in the ldconfig cache")


def without_libpq(libpq: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return in_private_mounts(
        f'mount --bind /dev/null "{libpq}"',
        ["env", "PSYCOPG_IMPL=python", *PYTEST, *args],
        cwd=cwd,
    )


def test_libpq_is_really_hidden(libpq: Path, tmp_path: Path) -> None:
    """The set-up the tests below rely on: psycopg cannot load in that namespace."""
    result = in_private_mounts(
        f'mount --bind /dev/null "{libpq}"',
        ["env", "PSYCOPG_IMPL=python", sys.executable, "-c", "import psycopg"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "couldn't import requested psycopg 'python' implementation" in result.stderr, result.stderr


def test_without_libpq_a_suite_that_needs_no_database_passes(pytester: pytest.Pytester, libpq: Path) -> None:
    write_tests(pytester, "test_plain", UNRELATED)
    result = without_libpq(libpq, pytester.path, "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "= dbbranch =" not in result.stdout  # no summary section


def test_without_libpq_a_suite_that_wants_a_branch_fails_once_naming_the_extra(
    pytester: pytest.Pytester, libpq: Path, tmp_path: Path
) -> None:
    """One error, the usage-error exit status, the extra to install; no server started (its
    folder holds no cluster)."""
    AlembicProject(pytester.path).add_widgets()
    write_tests(pytester, "test_db", WANTS_A_BRANCH)
    folder = tmp_path / "embedded"
    result = without_libpq(libpq, pytester.path, "-rA", f"--dbbranch-embedded-dir={folder}")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "pytest-dbbranch cannot load psycopg" in output
    assert "install 'pytest-dbbranch[binary]'" in output
    assert output.count("ERROR at setup of") <= 1, output
    assert " passed" not in output and "Traceback" not in output, output
    assert not list(folder.glob("pg*/data")), "a server was started"


def test_without_pwd_a_suite_that_needs_no_database_passes(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Windows has no ``pwd``: a ``sitecustomize`` makes it unimportable here."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["pwd"] = None\n')
    write_tests(
        pytester,
        "test_plain",
        UNRELATED
        + """
    def test_pwd_is_really_missing():
        assert sys.modules["pwd"] is None
""",
    )
    result = run_inner(pytester, None, "-p", "no:postgresql", "-q", PYTHONPATH=str(site))
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)
