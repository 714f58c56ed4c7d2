"""A run told to stop ends at once and leaves nothing: Ctrl-C and SIGTERM (a cancelled CI
job, ``docker stop``, ``timeout``) on the embedded default, and xdist workers whose
controller was killed.

Each run uses the embedded default (no URL) in a folder of its own under ``/dev/shm``: the
plugin's server, which the run stops when it ends. "Nothing left" is read afterwards by
starting that server again and listing its databases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import (
    AlembicProject,
    children_of,
    our_branches,
    postmasters_in,
    process_alive,
    remove_embedded_folder,
    write_tests,
)

WAITS_WITH_BRANCHES = """
    import os, signal

    def test_waits_for_a_signal(db_branch, db_branch_module, db_branch_session):
        db_branch.execute("SELECT 1")
        open(f"started-{os.getpid()}", "w").close()
        signal.pause()
"""

WORKERS_WAIT = """
    import os, signal, pytest

    @pytest.mark.parametrize("i", range(6))
    def test_waits(db_branch, db_branch_session, i):
        open(f"started-{os.getpid()}", "w").close()
        signal.pause()
"""


@pytest.fixture(scope="module")
def shm_folder() -> Iterator[Path]:
    """The embedded default's folder for this module's runs: in RAM, removed after (with
    whatever server still runs there)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    folder = base / f"dbbranch-signals-{uuid.uuid4().hex[:8]}"
    yield folder
    remove_embedded_folder(folder)


def start(pytester: pytest.Pytester, folder: Path, *args: str) -> subprocess.Popen[str]:
    """An inner run on the embedded default in ``folder``, in its own process group."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
    return subprocess.Popen(
        argv,
        cwd=pytester.path,
        env=dict(os.environ, DBBRANCH_EMBEDDED_DIR=str(folder)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_started(proc: subprocess.Popen[str], folder: Path, count: int, timeout: float = 120) -> None:
    """Until ``count`` tests are inside their body (each leaves a ``started-<pid>`` file)."""
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("started-*"))) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            out = stop_group(proc)
            pytest.fail(f"the inner tests never started (exit {proc.returncode}):\n{out}")
        time.sleep(0.02)


def stop_group(proc: subprocess.Popen[str]) -> str:
    """Kill what is left of an inner run (a failed test must not leave it running)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0]


def branches_left(folder: Path) -> tuple[list[str], int]:
    """Branches and templates on the embedded server of ``folder``, started again to look."""
    server = EmbeddedServer(folder)
    url = server.acquire("inspect").url()
    try:
        return our_branches(url), len(our_branches(url, "template"))
    finally:
        server.release("inspect")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_on_the_embedded_default_tears_down_at_once(
    pytester: pytest.Pytester, alembic_project: AlembicProject, shm_folder: Path, signum: signal.Signals
) -> None:
    """Function, module and session branches live, the test blocked: the signal ends the run
    with pytest's interrupted status (2) within seconds, every branch dropped, the embedded
    server stopped (the review measured 48-53 s, exit 1 and three branches left for Ctrl-C;
    SIGTERM killed the run with no teardown at all)."""
    write_tests(pytester, "test_wait", WAITS_WITH_BRANCHES)
    proc = start(pytester, shm_folder, "-s")
    try:
        wait_for_started(proc, pytester.path, 1)
        sent = time.monotonic()
        proc.send_signal(signum)
        output = proc.communicate(timeout=30)[0]
        elapsed = time.monotonic() - sent
    finally:
        stop_group(proc)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert elapsed < 10, f"{elapsed:.1f}s from the signal to the end of the run"
    assert "KeyboardInterrupt" in output
    assert "Connection refused" not in output and "Traceback" not in output, output
    assert postmasters_in(shm_folder) == [], "the embedded server was left running"
    branches, templates = branches_left(shm_folder)
    assert branches == []
    assert templates == 1


def test_orphaned_xdist_workers_stop_and_clean_up(
    pytester: pytest.Pytester, alembic_project: AlembicProject, shm_folder: Path
) -> None:
    """kill -9 of the controller of a ``-n 2`` run whose tests wait: the workers notice,
    tear down (their branches dropped) and exit within seconds instead of running on."""
    write_tests(pytester, "test_wait", WORKERS_WAIT)
    proc = start(pytester, shm_folder, "-n", "2")
    workers: list[int] = []
    try:
        wait_for_started(proc, pytester.path, 2)
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        while any(process_alive(pid) for pid in workers) and time.monotonic() - killed < 30:
            time.sleep(0.02)
        elapsed = time.monotonic() - killed
    finally:
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop_group(proc)
    assert not any(process_alive(pid) for pid in workers)
    assert elapsed < 10, f"the workers ran on for {elapsed:.1f}s after their controller died"
    assert postmasters_in(shm_folder) == [], "the embedded server was left running"
    branches, templates = branches_left(shm_folder)
    assert branches == []
    assert templates == 1
