"""The embedded server keeps its port across restarts, so a URL printed during a run (a kept
branch's) is right when ``dbbranch connect`` starts the server again after the run.

The run ends with sessions the server itself closed (``DROP DATABASE ... WITH (FORCE)``, the
shutdown): those leave TIME_WAIT sockets on the server's port for a minute, which PostgreSQL
binds through (SO_REUSEADDR); the check whether the old port is free must too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_dbbranch.server.embedded import EmbeddedServer
from tests.helpers import remove_embedded_folder


@pytest.fixture
def folder() -> Iterator[Path]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    made = base / f"dbb-port-{uuid.uuid4().hex[:8]}"
    yield made
    remove_embedded_folder(made)


def test_the_port_survives_a_restart_right_after_the_server_closed_a_session(folder: Path) -> None:
    """Start; the server ends a session whose client has not hung up yet (as a forced drop of
    a branch a test still holds does); stop; start at once: the same port. (Today the socket
    left on the port makes the free-port check say no, and the server moves to a new port
    for good.)"""
    server = EmbeddedServer(folder)
    first = server.acquire("test")
    victim = psycopg.connect(first.conninfo(), autocommit=True)
    try:
        with psycopg.connect(first.conninfo(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (victim.info.backend_pid,))
        server.release("test")
        second = server.acquire("test")
        server.release("test")
    finally:
        victim.close()
    assert second.port == first.port
