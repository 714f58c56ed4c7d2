"""The shipped example application's suite runs green the way its README says to run it: with
no server configured (the plugin starts its own), and against an existing server."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import copy_example, our_branches, run_inner

#: Added to the example's tests: what the embedded default promises.
EMBEDDED_DEFAULT = """
    def test_embedded_default(db_branch, db_branch_info):
        assert db_branch_info.url.startswith("postgresql://postgres@127.0.0.1:")
        assert db_branch.execute("SHOW fsync").fetchone()[0] == "off"
"""


def _passed(result: pytest.RunResult) -> int:
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    return int(outcomes["passed"])


@pytest.fixture
def default_dir(pytester: pytest.Pytester) -> Iterator[Path]:
    """Where the embedded default keeps its server for this test (in RAM, removed after)."""
    base = Path("/dev/shm") / f"dbbranch-default-{pytester.path.name}"
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_example_suite_on_the_embedded_default(pytester: pytest.Pytester, default_dir: Path) -> None:
    """No URL: one server started for both xdist workers (``--dist loadscope``, three templates:
    head, 0001, 0002), stopped at the end; its data folder survives, so the next run builds
    nothing; and nothing of ours is left on it."""
    copy_example(pytester.path)
    (pytester.path / "tests" / "test_embedded_default.py").write_text(textwrap.dedent(EMBEDDED_DEFAULT))
    first = run_inner(
        pytester, None, "-n", "2", "--dist", "loadscope", DBBRANCH_EMBEDDED_DIR=str(default_dir)
    )
    assert first.ret == 0, first.stdout.str()
    assert _passed(first) >= 16
    first.stdout.fnmatch_lines(["*templates: *, 3 built*"])
    homes = list(default_dir.glob("pg*"))
    assert len(homes) == 1
    assert not (homes[0] / "data" / "postmaster.pid").exists(), "server left running"

    again = run_inner(pytester, None, DBBRANCH_EMBEDDED_DIR=str(default_dir))
    assert _passed(again) == _passed(first)
    again.stdout.fnmatch_lines(["*templates: * cache hits, 0 built*"])

    server = EmbeddedServer(default_dir)
    url = server.acquire("inspect").url()
    try:
        assert our_branches(url) == []
        assert len(our_branches(url, "template")) == 3
    finally:
        server.release("inspect")


@pytest.mark.system_server
def test_example_suite_on_existing_server_as_non_superuser(
    pytester: pytest.Pytester, system_url: str
) -> None:
    """The existing-server path: a role with only LOGIN CREATEDB runs the whole example."""
    copy_example(pytester.path)
    result = run_inner(pytester, system_url)
    assert result.ret == 0, result.stdout.str()
    assert _passed(result) >= 15
    assert our_branches(system_url) == []
