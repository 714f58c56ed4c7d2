"""The shipped example application's suite runs green the way its README says to run it: with
no server configured (the plugin starts its own), and against an existing server; with plain
``-n 2`` (no ``--dist`` mode) and in any order, as pytest-randomly would run it."""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.server.binaries import find_bindir
from pytest_dbbranch.server.embedded import EmbeddedServer, server_major
from tests.helpers import copy_example, our_branches, run_inner

#: Added to the example's tests: what the embedded default promises.
EMBEDDED_DEFAULT = """
    def test_embedded_default(db_branch, db_branch_info):
        assert db_branch_info.url.startswith("postgresql://postgres@127.0.0.1:")
        assert db_branch.execute("SHOW fsync").fetchone()[0] == "off"
"""


#: A root conftest.py for the copy: pytest-randomly's effect (it is not a dependency here),
#: the collected items shuffled by a seed, the same seed in every xdist worker.
SHUFFLED = """
    import os
    import random

    def pytest_collection_modifyitems(items):
        random.Random(int(os.environ["SHUFFLE_SEED"])).shuffle(items)
        with open("order-" + os.environ["SHUFFLE_SEED"] + ".txt", "w") as f:
            f.write("\\n".join(item.nodeid for item in items))
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
    """No URL: one server started for both xdist workers (plain ``-n 2``: module-scope tests
    may land on either worker; three templates: head, 0001, 0002), stopped at the end; its
    data folder survives, so the next run builds nothing; and nothing of ours is left on it.
    Both runs in a shuffled order (two seeds, two different orders)."""
    copy_example(pytester.path)
    (pytester.path / "tests" / "test_embedded_default.py").write_text(textwrap.dedent(EMBEDDED_DEFAULT))
    (pytester.path / "conftest.py").write_text(textwrap.dedent(SHUFFLED))
    first = run_inner(pytester, None, "-n", "2", DBBRANCH_EMBEDDED_DIR=str(default_dir), SHUFFLE_SEED="1")
    assert first.ret == 0, first.stdout.str()
    assert _passed(first) >= 16
    first.stdout.fnmatch_lines(["*templates: *, 3 built*"])
    homes = list(default_dir.glob("pg*"))
    assert len(homes) == 1
    # Keyed by the PostgreSQL major: another version's binaries never start this cluster.
    assert re.fullmatch(rf"pg{server_major(find_bindir())}-[0-9a-f]{{8}}", homes[0].name), homes
    assert not (homes[0] / "data" / "postmaster.pid").exists(), "server left running"

    again = run_inner(pytester, None, DBBRANCH_EMBEDDED_DIR=str(default_dir), SHUFFLE_SEED="2")
    assert _passed(again) == _passed(first)
    orders = [(pytester.path / f"order-{seed}.txt").read_text() for seed in ("1", "2")]
    assert orders[0] != orders[1] and sorted(orders[0].split()) == sorted(orders[1].split())
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
