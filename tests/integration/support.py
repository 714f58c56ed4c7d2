"""Helpers of the integration layer that are not fixtures (those are in ``conftest.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pytest_dbbranch.branching.manager import BranchManager

#: Builds a manager for a new run (or for ``run_id``'s run) from settings overrides.
MakeManager = Callable[..., BranchManager]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll ``condition`` until it returns something truthy: for work done elsewhere (a warm
    pool's thread, a backend exiting, an emulator operation) that offers no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.005)


from pathlib import Path  # noqa: E402  (appended: other sessions edit the top of this file)


def dump_to(url: str, dbname: str, target: Path, *args: str) -> Path:
    """``pg_dump`` (the plugin's client, PostgreSQL 18) of ``dbname`` into ``target``, exactly
    as a user would make it: raw output, ``\\restrict`` lines and all."""
    import os
    import subprocess

    from pytest_dbbranch.conninfo import ServerAddress
    from pytest_dbbranch.server.binaries import client

    address = ServerAddress.parse(url)
    argv = [client("pg_dump"), "-h", str(address.host), "-p", str(address.port), "-U", str(address.user)]
    env = dict(os.environ, PGPASSWORD=address.password or "")
    subprocess.run([*argv, *args, "-f", str(target), dbname], env=env, check=True, capture_output=True)
    return target
