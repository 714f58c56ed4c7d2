"""The embedded server outlives a run for its idle period, and only then.

Each test has a server folder of its own in RAM, driven through ``EmbeddedServer`` and
``BranchManager`` as a run drives them; the keeper is the real detached process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.server.embedded import EmbeddedServer
from pytest_dbbranch.server.keeper import keeper_alive
from pytest_dbbranch.server.process import pid_alive
from pytest_dbbranch.settings import DEFAULT_EMBEDDED_IDLE, Settings, resolve
from tests.helpers import REPO
from tests.integration.support import wait_for


@pytest.fixture
def folder() -> Iterator[Path]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    made = base / f"dbbranch-idle-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    yield made
    server = EmbeddedServer(made)  # idle 0: stops what a failed test left running
    if server.data.exists():
        server.acquire("cleanup")
        server.release("cleanup")
    shutil.rmtree(made, ignore_errors=True)


def _settings(folder: Path, tmp_path: Path, idle: str) -> Settings:
    return resolve(env={"DBBRANCH_EMBEDDED_DIR": str(folder), "DBBRANCH_EMBEDDED_IDLE": idle}, root=tmp_path)


def test_server_outlives_the_run_and_the_next_run_attaches(folder: Path, tmp_path: Path) -> None:
    """A run with an idle period leaves the server (and its keeper) running; the next run
    attaches to the same postmaster, quickly, and forks from the template the first built."""
    settings = _settings(folder, tmp_path, "60")
    with BranchManager(settings) as first, first.branch() as branch:
        assert branch.connection.execute("SELECT 1").fetchone() == (1,)
        assert first._embedded is not None
        server = first._embedded
        pid = server.postmaster_pid()
    assert pid is not None and pid_alive(pid), "the server stopped with the run"
    wait_for(lambda: keeper_alive(server.home), what="the keeper to start")
    assert not list(server.users.iterdir()), "the run left its registration"

    started = time.perf_counter()
    with BranchManager(settings) as second:
        second.backend()
        attach_s = time.perf_counter() - started
        assert second._embedded is not None
        assert second._embedded.postmaster_pid() == pid, "a new postmaster was started"
        with second.branch() as branch:
            assert branch.connection.execute("SELECT 1").fetchone() == (1,)
        assert second.stats.template_hits == 1 and second.stats.template_builds == 0
    # Attaching is a file lock, a pid file and a connection: nothing is spawned.
    assert attach_s < 1.0, f"attaching took {attach_s:.2f}s"


def test_idle_server_stops_after_its_idle_period(folder: Path) -> None:
    server = EmbeddedServer(folder, idle=1)
    server.acquire("run-1")
    pid = server.postmaster_pid()
    assert pid is not None
    assert server.release("run-1") is False, "stopped at once despite the idle period"
    assert pid_alive(pid)
    wait_for(lambda: not pid_alive(pid), timeout=15, what="the idle server to stop")
    wait_for(lambda: not keeper_alive(server.home), timeout=5, what="the keeper to exit")
    assert not (server.data / "postmaster.pid").exists(), "not a clean shutdown"


def test_a_run_coming_back_resets_the_idle_clock(folder: Path) -> None:
    """While a run is registered the keeper never stops the server, however long it runs."""
    server = EmbeddedServer(folder, idle=1)
    server.acquire("long-run")
    pid = server.postmaster_pid()
    time.sleep(2.5)  # more than the idle period, with a live run registered
    assert pid is not None and pid_alive(pid)
    server.release("long-run")
    wait_for(lambda: not pid_alive(pid), timeout=15, what="the idle server to stop")


def test_removing_the_data_folder_stops_the_server(folder: Path) -> None:
    server = EmbeddedServer(folder, idle=600)
    server.acquire("run-1")
    server.release("run-1")
    pid = server.postmaster_pid()
    assert pid is not None and pid_alive(pid)
    _remove(folder)
    wait_for(lambda: not pid_alive(pid), timeout=15, what="the server of a removed folder to stop")
    time.sleep(1)  # a keeper that was starting has had time to look
    assert not folder.exists(), "something brought the removed folder back"


def _remove(folder: Path) -> None:
    """``rm -rf``, again while it meets files the running server creates meanwhile."""
    while folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


def test_a_run_killed_with_minus_9_does_not_keep_the_server_forever(folder: Path) -> None:
    """A run killed before it could leave stays registered; its process is gone, so after the
    idle period the keeper stops the server."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pytest_dbbranch.server.embedded import EmbeddedServer
        server = EmbeddedServer(Path({str(folder)!r}), idle=1)
        server.acquire("doomed")
        print(server.postmaster_pid(), flush=True)
        time.sleep(120)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        time.sleep(1.5)
        assert pid_alive(pid), "stopped while the run was alive"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for(lambda: not pid_alive(pid), timeout=15, what="the server of a killed run to stop")


def test_under_ci_the_server_stops_with_the_run(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    settings = resolve(env={"DBBRANCH_EMBEDDED_DIR": str(folder)}, root=tmp_path)
    assert settings.effective_embedded_idle() == 0
    with BranchManager(settings) as manager:
        manager.backend()
        assert manager._embedded is not None
        server = manager._embedded
        pid = server.postmaster_pid()
    assert pid is not None
    wait_for(lambda: not pid_alive(pid), timeout=5, what="the server to stop")
    assert not keeper_alive(server.home)


def test_idle_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert resolve(root=tmp_path).effective_embedded_idle() == DEFAULT_EMBEDDED_IDLE
    monkeypatch.setenv("CI", "false")
    assert resolve(root=tmp_path).effective_embedded_idle() == DEFAULT_EMBEDDED_IDLE
    monkeypatch.setenv("CI", "1")
    assert resolve(root=tmp_path).effective_embedded_idle() == 0
    # An explicit value wins over CI, in every form.
    for text, seconds in (("0", 0), ("off", 0), ("90", 90), ("15m", 900)):
        settings = resolve(env={"DBBRANCH_EMBEDDED_IDLE": text}, root=tmp_path)
        assert settings.effective_embedded_idle() == seconds
    assert resolve(ini={"embedded_idle": "2h"}, root=tmp_path).effective_embedded_idle() == 7200
    assert resolve(options={"embedded_idle": "30"}, root=tmp_path).effective_embedded_idle() == 30
    from pytest_dbbranch.errors import ConfigError

    with pytest.raises(ConfigError, match="DBBRANCH_EMBEDDED_IDLE"):
        resolve(env={"DBBRANCH_EMBEDDED_IDLE": "soon"}, root=tmp_path)
