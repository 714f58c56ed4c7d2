"""Whether a run is alive is the server's answer, not the host's: a run in another container
or PID namespace, with the same hostname, cannot see run A's process, yet must not take
A's branches; once A is killed, they go, whoever asks.

Run A is a real pytest process held in the middle of its run; run B starts in a new PID
namespace (``unshare --pid --fork --mount-proc``, as a container would), where A's pid does
not exist.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.helpers import AlembicProject, our_branches, write_tests
from tests.suites.live_run import WATCHDOG_SECONDS, LiveRun
from tests.suites.support import dbbranch

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

RUN_A = """
    import sys

    def test_survives_b(db_branch, db_branch_session):
        print("A-HOLDS", flush=True)
        sys.stdin.readline()
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        assert db_branch_session.execute("SELECT count(*) FROM widgets").fetchone() == (1,)

    def test_killed(db_branch):
        print("A-KILL-ME", flush=True)
        sys.stdin.readline()
"""

RUN_B = """
    import os, socket

    def test_cannot_see_run_a(db_branch):
        # The situation the old pid check got wrong: same hostname, A's pid invisible.
        assert socket.gethostname() == os.environ["HOST_OF_A"]
        assert not os.path.exists(f"/proc/{os.environ['PID_OF_A']}")
        assert db_branch.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
"""


def in_new_pid_namespace() -> list[str]:
    """The ``unshare`` prefix, once it is known to work here; a missing tool skips (with the
    reason), a tool that cannot make a namespace fails."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: cannot start a run in another PID namespace")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, (
        f"`{' '.join(UNSHARE)} true` failed ({probe.returncode}): {probe.stderr.strip()}; making a PID "
        "namespace needs root or unprivileged user namespaces"
    )
    return UNSHARE


def test_a_run_in_another_pid_namespace_leaves_a_live_run_alone(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """B (new PID namespace, same hostname) reaps at its start: A's branches survive and
    A's test on them passes. Then A is killed with SIGKILL in its next test: ``dbbranch gc``,
    without ``--older-than``, removes everything A left."""
    prefix = in_new_pid_namespace()
    write_tests(pytester, "test_a", RUN_A)
    write_tests(pytester, "test_b", RUN_B)
    # No warm pool: nothing of A's is being forked in the background when it is killed.
    with LiveRun(
        pytester.path, "test_a.py", "--dbbranch-url", embedded_url, env={"DBBRANCH_POOL_SIZE": "0"}
    ) as a:
        a.wait_for("A-HOLDS")
        held = our_branches(embedded_url)
        assert len(held) == 2  # the session and function branches

        env = {"HOST_OF_A": socket.gethostname(), "PID_OF_A": str(a.proc.pid)}
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_b.py", "--dbbranch-url"]
        b = subprocess.run(
            [*prefix, *argv, embedded_url],
            cwd=pytester.path,
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=WATCHDOG_SECONDS,
        )
        assert b.returncode == 0, b.stdout + b.stderr
        assert "1 passed" in b.stdout
        assert set(held) <= set(our_branches(embedded_url)), "B took a live run's branches"

        a.release()
        a.wait_for("A-KILL-ME")
        assert "test_a.py::test_survives_b A-HOLDS\nPASSED" in a.output
        a.kill()

    left = our_branches(embedded_url)
    assert left, "A was killed with live branches"
    code, out, err = dbbranch(capsys, "gc", "--url", embedded_url)
    assert code == 0, err
    assert {line.split()[1] for line in out.splitlines() if line.startswith("deleted ")} == set(left)
    assert our_branches(embedded_url) == []
    assert len(our_branches(embedded_url, "template")) == 1
