"""The Lakebase doctor against the emulator: every check runs, the table is printed, and
nothing it made is left behind (branches purged, databases dropped), in the service's
behaviour (per the rule on expiries and children) and in the emulator's older one."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from pytest_dbbranch.backends.lakebase_api import LakebaseApi
from pytest_dbbranch.backends.lakebase_doctor import run_doctor
from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator

PROJECT = "demo"
CHECKS = [
    "project readable",
    "create a branch (TTL 1 h)",
    "implicit 'primary' endpoint",
    "endpoint usable (host, port)",
    "database credential",
    "login, sslmode=require",
    "CREATE DATABASE in the branch",
    "COMMENT ON the owned database",
    "schema load + TEMPLATE copy",
    "CREATE DATABASE ... TEMPLATE databricks_postgres",
    "COMMENT ON DATABASE databricks_postgres",
    "child of a branch with a TTL",
    "child of a branch without expiry",
    "expiry on a branch with children",
    "update_branch extends the TTL",
    "refused create: duplicate id",
    "refused create: invalid id",
    "clean-up (purge)",
]


#: The emulator's older behaviour in every respect: no implicit endpoint, one port, TLS
#: optional, hard deletes, no branch rules, children of expiring branches allowed, the limit
#: reported through the operation, one backing database per branch.
LEGACY: dict[str, Any] = {
    "timing": "fast",
    "storage": "database",
    "auto_endpoint": False,
    "host_style": "single",
    "tls_required": False,
    "soft_delete": False,
    "branch_rules": False,
    "ttl_with_children": "allow",
    "limit_error": "operation",
}
BEHAVIOURS = {
    "service": {"timing": "realistic", "operation_delay": 0.02},
    "refuse-ttl": {"timing": "realistic", "operation_delay": 0.02, "ttl_with_children": "refuse-ttl"},
    "legacy": LEGACY,
}
#: What the TTL rows say, per behaviour: (child of a TTL branch, child of a no-expiry branch,
#: expiry on a branch with children).
TTL_ROWS = {
    "service": (
        "info refused: [400 FAILED_PRECONDITION] source branch",
        "pass",
        "info refused to add an expiry to it: [400 FAILED_PRECONDITION]",
    ),
    "refuse-ttl": (
        "info allowed",
        "info not tried",
        "info refused to extend its expiry: [400 FAILED_PRECONDITION]",
    ),
    "legacy": ("info allowed", "info not tried", "info allowed to extend its expiry"),
}


@pytest.fixture(params=list(BEHAVIOURS))
def behaviour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def emulator(embedded_server: ServerAddress, behaviour: str) -> Iterator[LakebaseEmulator]:
    emu = LakebaseEmulator(embedded_server, **BEHAVIOURS[behaviour])
    emu.start()
    emu.create_project(PROJECT)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def api(emulator: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LakebaseApi:
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    client = WorkspaceClient(config=Config(host=emulator.url, token=emulator.token, retry_timeout_seconds=1))
    api = LakebaseApi(client, PROJECT, retry_budget=5.0, operation_timeout=30.0)
    api.seed_duration = 0.05
    return api


def single_port(api: LakebaseApi, emulator: LakebaseEmulator) -> int | None:
    """This emulator serves every endpoint on 127.0.0.1 and one port; one that gives each
    endpoint its own address (on 5432) needs none."""
    host = api.endpoint("production").host
    return emulator.pg_port if host == "127.0.0.1" else None


def backing_databases(emulator: LakebaseEmulator) -> set[str]:
    with psycopg.connect(emulator.backing.conninfo()) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_every_check_runs_and_nothing_is_left(
    api: LakebaseApi, emulator: LakebaseEmulator, behaviour: str
) -> None:
    port = single_port(api, emulator)
    databases_before = backing_databases(emulator)
    out = io.StringIO()
    status = run_doctor(
        api,
        source_branch="production",
        out=out,
        schema_sql="CREATE TABLE widgets (id int PRIMARY KEY, name text); CREATE INDEX ON widgets (name);",
        port=port,
        sslmode=emulator.sslmode,
    )
    report = out.getvalue()
    rows = [line.strip() for line in report.splitlines()[1:-1]]
    assert [row for row in rows if not any(row.startswith(check) for check in CHECKS)] == [], report
    assert [check for check in CHECKS if not any(row.startswith(check) for row in rows)] == [], report
    failed = [row for row in rows if "  FAIL  " in row]
    assert failed == [] and status == 0, report

    def said(check: str) -> str:
        row = next(row for row in rows if row.startswith(check))
        result, _seconds, detail = row[len(check) :].split(maxsplit=2)
        return f"{result} {detail}"

    ttl_rows = (
        "child of a branch with a TTL",
        "child of a branch without expiry",
        "expiry on a branch with children",
    )
    for check, expected in zip(ttl_rows, TTL_ROWS[behaviour], strict=True):
        assert said(check).startswith(expected), report
    assert said("update_branch extends the TTL").startswith("pass dbbdoc-"), report
    assert said("implicit 'primary' endpoint").startswith("info no" if behaviour == "legacy" else "info yes")
    assert said("clean-up (purge)").startswith("pass deleted dbbdoc-"), report
    assert [b["name"] for b in emulator.branches(PROJECT)] == [f"projects/{PROJECT}/branches/production"]
    assert backing_databases(emulator) == databases_before
    assert emulator.token not in report


def test_a_missing_source_fails_early_and_cleans_up(api: LakebaseApi, emulator: LakebaseEmulator) -> None:
    out = io.StringIO()
    assert run_doctor(api, source_branch="no-such-branch", out=out, port=single_port(api, emulator)) == 1
    report = out.getvalue()
    assert "create a branch (TTL 1 h)" in report and "FAIL" in report
    assert "clean-up (purge)" in report
    assert [b["name"] for b in emulator.branches(PROJECT)] == [f"projects/{PROJECT}/branches/production"]
