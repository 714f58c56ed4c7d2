"""A client written with databricks-sdk and psycopg alone works against the emulator's defaults.

This is what a user's own code does on Lakebase, with nothing emulator-specific: no port, no
routing hints, realistic operation timing, the endpoint host from the API, TLS required.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.common import lro
from databricks.sdk.service.postgres import Branch, BranchSpec
from google.protobuf.duration_pb2 import Duration

from pytest_dbbranch.emulator import LakebaseEmulator


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LakebaseEmulator]:
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    with LakebaseEmulator() as emu:
        emu.create_project("demo")
        yield emu


def test_sdk_only_client(emulator: LakebaseEmulator) -> None:
    w = WorkspaceClient(host=emulator.url, token=emulator.token)
    timeout = lro.LroOptions(timeout=timedelta(seconds=60))

    branch = w.postgres.create_branch(
        "projects/demo", Branch(spec=BranchSpec(ttl=Duration(seconds=3600))), "sdk-client"
    ).wait(timeout)
    assert branch.name == "projects/demo/branches/sdk-client"

    # The implicit primary endpoint exists as soon as the branch does; its host may come later.
    endpoint = w.postgres.get_endpoint(f"{branch.name}/endpoints/primary")
    deadline = time.monotonic() + 30
    while not (endpoint.status and endpoint.status.hosts and endpoint.status.hosts.host):
        assert time.monotonic() < deadline, "the endpoint never got a host"
        time.sleep(0.2)
        endpoint = w.postgres.get_endpoint(f"{branch.name}/endpoints/primary")
    host = endpoint.status.hosts.host

    credential = w.postgres.generate_database_credential(endpoint=f"{endpoint.name}")
    user = w.current_user.me().user_name
    with psycopg.connect(
        host=host,
        user=user,
        password=credential.token,
        dbname="databricks_postgres",
        sslmode="require",
        autocommit=True,
    ) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            user,
            "databricks_postgres",
        )
        conn.execute("CREATE TABLE only_on_the_branch (id int)")

    production = w.postgres.get_endpoint("projects/demo/branches/production/endpoints/primary")
    assert production.status and production.status.hosts and production.status.hosts.host
    assert production.status.hosts.host != host
    token = w.postgres.generate_database_credential(endpoint=f"{production.name}").token
    with psycopg.connect(
        host=production.status.hosts.host,
        user=user,
        password=token,
        dbname="databricks_postgres",
        sslmode="require",
    ) as conn:
        assert conn.execute("SELECT to_regclass('only_on_the_branch')").fetchone() == (None,)

    w.postgres.delete_branch(f"{branch.name}").wait(timeout)
    assert [b.name for b in w.postgres.list_branches("projects/demo")] == [
        "projects/demo/branches/production"
    ]
