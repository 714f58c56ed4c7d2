"""Nothing waits for ever: a frozen server (SIGSTOP, a lost network: its own timeouts cannot
fire) fails the admin statement after ``timeout`` and counts as lost, and a builder that
hangs holding the build lock makes the next builder give up after ``timeout`` with a message
saying what it waited for. (``dbbranch_timeout`` sets it; default 10 minutes.)"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import pytest

from pytest_dbbranch.backends import Tag, build_lock
from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.branching.sealing import ensure_sealed
from pytest_dbbranch.branching.templates import TemplatePlan
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.errors import DbBranchError, ServerLostError
from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import children_of, drop_ours, postmasters_in, remove_embedded_folder
from tests.integration.support import MakeManager

NAME = "dbbt-timeouts-test"


@pytest.fixture
def spare_server() -> Iterator[EmbeddedServer]:
    """A throwaway embedded server in its own folder: this module freezes it."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    folder = base / f"dbbranch-frozen-{uuid.uuid4().hex[:8]}"
    server = EmbeddedServer(folder)
    try:
        server.acquire("timeouts")
        yield server
    finally:
        thaw(folder)
        remove_embedded_folder(folder)


def server_processes(folder: Path) -> list[int]:
    postmasters = postmasters_in(folder)
    return postmasters + [child for pid in postmasters for child in children_of(pid)]


def freeze(folder: Path) -> None:
    pids = server_processes(folder)
    assert len(pids) > 1, "no server to freeze"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def thaw(folder: Path) -> None:
    for pid in server_processes(folder):
        os.kill(pid, signal.SIGCONT)


def outcome_within(call: Callable[[], Any], limit: float) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread; its exception (None if it returned) and how long it took.
    Fails the test if it is still running after ``limit`` seconds (the caller's finally then
    unblocks it)."""
    box: dict[str, BaseException | None] = {"error": None}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    took = time.monotonic() - started
    if thread.is_alive():
        pytest.fail(f"still waiting after {limit}s")
    return box["error"], took


def test_a_frozen_server_is_lost_after_the_timeout(spare_server: EmbeddedServer, tmp_path: Path) -> None:
    """Every process of the server stopped (SIGSTOP): the next statement fails after
    ``timeout`` with ``ServerLostError``; every later call fails at once with the same error,
    without trying the network again."""
    backend = PostgresBackend(spare_server.address(), lock_folder=tmp_path, timeout=2)
    assert backend.exists("postgres")
    freeze(spare_server.base)
    try:
        error, took = outcome_within(lambda: backend.exists("postgres"), 20)
        assert isinstance(error, ServerLostError), repr(error)
        assert 1.5 < took < 8, f"{took:.1f}s"
        message = str(error)
        where = spare_server.address().display_url()
        assert message.startswith(f"the server at {where} was lost at "), message
        assert "no answer from the server within 2s" in message
        assert "every later request of this run fails at once" in message

        again, took = outcome_within(lambda: backend.list_ours(), 20)
        assert again is error and took < 0.5
        held, took = outcome_within(lambda: backend.lock(build_lock(NAME)).__enter__(), 20)
        assert held is error and took < 0.5
    finally:
        thaw(spare_server.base)
        backend.close()


def test_a_builder_waits_for_another_machines_build_lock_at_most_the_timeout(
    clean_embedded: str, tmp_path: Path
) -> None:
    """Two machines sharing a server (separate lock folders): while one holds the advisory
    build lock and hangs, the other gives up after ``timeout``, saying what it waited for and
    which setting sets the wait; once the lock is free it builds."""
    address = ServerAddress.parse(clean_embedded)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    hanging = PostgresBackend(address, lock_folder=tmp_path / "a")
    waiting = PostgresBackend(address, lock_folder=tmp_path / "b", timeout=1)
    built: list[str] = []

    def build() -> bool:
        return ensure_sealed(
            waiting,
            NAME,
            tag=Tag(kind="template", run="run-b", parent="", group="g"),
            parent=lambda: "template0",
            build=lambda: built.append(NAME),
            run_id="run-b",
        )

    try:
        with hanging.lock(build_lock(NAME)):
            error, took = outcome_within(build, 20)
        assert isinstance(error, DbBranchError), repr(error)
        assert 0.9 < took < 6, f"{took:.1f}s"
        assert str(error).startswith(f"waited 1s for another process building {NAME}; it may hang"), error
        assert "dbbranch_timeout sets the wait" in str(error)
        assert built == [] and not waiting.exists(NAME)

        assert outcome_within(build, 20)[0] is None
        assert built == [NAME]
    finally:
        hanging.close()
        waiting.close()
        drop_ours(clean_embedded)


def test_a_builder_waits_for_the_machines_file_lock_at_most_the_timeout(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    """On one machine builders queue on a lock file: a process that hangs holding it makes
    the next one (here a run with ``timeout = 1``) give up after a second instead of waiting
    for ever, naming the template."""
    manager = make_manager(timeout=1)
    plan = TemplatePlan(manager.settings, manager.backend())  # its name, not built yet
    lock = filelock.FileLock(str(manager.backend().lock_folder / f"{plan.name}.lock"))
    with lock:
        error, took = outcome_within(lambda: manager.create(node_id="t::test_a"), 20)
    assert isinstance(error, DbBranchError), repr(error)
    assert 0.9 < took < 6, f"{took:.1f}s"
    assert str(error).startswith(
        f"waited 1s for another process on this machine building {plan.name}; it may hang"
    ), error
    assert "dbbranch_timeout sets the wait" in str(error)
