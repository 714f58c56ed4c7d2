"""A server that dies in the middle of a run is noticed once: the run reconnects for
``RECONNECT_SECONDS`` (a restart or a failover is survived: ``test_guarantees``), then every
later test that needs a branch fails at once with the same error, which says when the
server went and, for the embedded server, what its log says. Tests that need no database
still run. (The review measured 275 s for 21 remaining tests before: ≈13 s each.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.backends.postgres import RECONNECT_SECONDS
from tests.helpers import AlembicProject, item_outcomes, remove_embedded_folder, run_inner, write_tests

STOPS_THE_SERVER = """
    import os, signal, time
    from pathlib import Path
    import pytest

    def test_0_stops_the_server(db_branch):
        # What `pg_ctl stop -m immediate` does: SIGQUIT to the postmaster (we run as the
        # user who may signal it: root, or the server's own user).
        data = Path(db_branch.execute("SHOW data_directory").fetchone()[0])
        postmaster = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(postmaster, signal.SIGQUIT)
        while (data / "postmaster.pid").exists():
            time.sleep(0.01)
        Path("stopped-at").write_text(repr(time.time()))

    @pytest.mark.parametrize("i", range(20))
    def test_1_needs_a_branch(db_branch, i):
        pass

    def test_2_needs_no_database():
        pass
"""


@pytest.fixture
def shm_folder() -> Iterator[Path]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    folder = base / f"dbbranch-lost-{uuid.uuid4().hex[:8]}"
    yield folder
    remove_embedded_folder(folder)


def test_a_server_stopped_mid_run_fails_the_rest_at_once(
    pytester: pytest.Pytester, alembic_project: AlembicProject, shm_folder: Path
) -> None:
    write_tests(pytester, "test_lost", STOPS_THE_SERVER)
    started = time.monotonic()
    result = run_inner(pytester, None, "-rA", "-p", "no:randomly", DBBRANCH_EMBEDDED_DIR=str(shm_folder))
    took = time.monotonic() - started
    ended = time.time()
    since_stop = ended - float((pytester.path / "stopped-at").read_text())
    output = result.stdout.str()

    outcomes = item_outcomes(result)
    # The first test passes (its branch's drop at teardown may be the one that meets the
    # lost server, when no warm pool drops it in the background).
    assert "PASSED test_lost.py::test_0_stops_the_server" in output
    assert outcomes["test_lost.py::test_2_needs_no_database"] == "PASSED", output
    assert [outcomes[f"test_lost.py::test_1_needs_a_branch[{i}]"] for i in range(20)] == ["ERROR"] * 20
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # One reconnect deadline, then nothing more to wait for.
    assert since_stop < RECONNECT_SECONDS + 20, f"{since_stop:.1f}s from the stop to the end of the run"
    assert took < 60, f"the run took {took:.1f}s"
    # Each error says the server was lost, when, and why (the embedded server's log).
    assert output.count("pytest-dbbranch: the server at postgresql://postgres@127.0.0.1:") >= 20
    assert output.count("was lost at ") >= 20
    assert output.count("the embedded server's log ends with:") >= 20
    assert "received immediate shutdown request" in output
    assert "every later request of this run fails at once" in output
    assert "Traceback" not in output
    print(f"server stop -> end of run: {since_stop:.1f}s (whole run {took:.1f}s)")
