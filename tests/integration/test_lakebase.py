"""The Lakebase backend in process: a ``BranchManager`` configured for Lakebase talks to the
emulator through the real databricks-sdk client and logs in through its wire proxy with
OAuth-style database credentials, as it would to Lakebase.

``lakebase_env`` sets the DATABRICKS_* and DBBRANCH_LAKEBASE_* variables in this process;
the settings are resolved from them as the plugin resolves them.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.service.postgres import Branch as SdkBranch
from databricks.sdk.service.postgres import BranchSpec
from google.protobuf.duration_pb2 import Duration

import pytest_dbbranch.backends.lakebase as lakebase_module
from pytest_dbbranch.backends.lakebase import LakebaseBackend, LakebaseConfig
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.errors import (
    ConfigError,
    DbBranchError,
    LakebaseOperationError,
    NotOursError,
    ServerError,
)
from pytest_dbbranch.settings import Settings, resolve
from tests.helpers import AlembicProject
from tests.integration.support import MakeManager, wait_for

PROJECT = "demo"


@pytest.fixture
def lakebase(lakebase_env: dict[str, str], alembic_project: AlembicProject) -> Settings:
    """The widgets project (its alembic.ini is found in the root) on the emulator's project."""
    return resolve(env=os.environ, root=alembic_project.root)


def branch_id(branch: dict[str, Any]) -> str:
    return str(branch["name"]).rsplit("/", 1)[-1]


def ours(emulator: LakebaseEmulator, prefix: str = "dbb") -> list[dict[str, Any]]:
    """Branches of the project the plugin made (``dbb-`` test branches, ``dbbt-`` templates)."""
    return [b for b in emulator.branches(PROJECT) if branch_id(b).startswith(prefix)]


def count(emulator: LakebaseEmulator, call: str) -> int:
    return emulator.calls().get(call, 0)


def finished(client: Any, operation: str) -> Callable[[], bool]:
    return lambda: bool(client.postgres.get_operation(operation).done)


def clean_failure(error: BaseException, *patterns: str) -> str:
    message = str(error)
    for pattern in patterns:
        literal_brackets = pattern.replace("[", "[[]")
        assert fnmatch.fnmatchcase(message, f"*{literal_brackets}*"), f"{pattern!r} not in:\n{message}"
    return message


def test_every_branch_has_a_ttl(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator
) -> None:
    """A crashed run's branches expire on their own: tests' after ``lakebase_ttl``, the
    template after ``lakebase_template_ttl`` (default 7 days)."""
    manager = make_manager(base=lakebase, keep="always", lakebase_ttl=900)
    with manager.branch():
        pass
    branches = {branch_id(b): b for b in ours(emulator)}
    assert len(branches) == 2, "the kept test branch and the template"
    for branch in branches.values():
        assert branch["status"].get("expire_time"), branch
    ttls = {name[:4]: b["spec"]["ttl"] for name, b in branches.items()}
    assert ttls == {"dbb-": "900s", "dbbt": f"{7 * 86400}s"}


def test_clone_and_rollback_cost_one_branch_per_worker(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator
) -> None:
    """Lakebase branches are budgeted: with ``clone`` (a database copied inside the worker's
    branch) or ``rollback`` isolation, tests cost no branch of their own, and still do not
    see each other's writes (clone isolates commits too)."""
    make_manager(base=lakebase).template()
    for isolation in ("clone", "rollback"):
        before = count(emulator, "POST create_branch")
        manager = make_manager(base=lakebase, isolation=isolation)
        for index in range(3):
            with manager.branch(node_id=f"t::test_a[{index}]") as branch:
                conn = branch.connection
                assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,), isolation
                conn.execute("DELETE FROM customers")
                if isolation == "clone":
                    conn.commit()
        assert count(emulator, "POST create_branch") - before == 1, isolation
        manager.close()
        assert ours(emulator, "dbb-") == [], isolation


class ShiftedClock:
    """The ``time`` module as the Lakebase backend sees it, with the wall clock moved ahead:
    credential expiry without waiting for it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.monotonic = time.monotonic
        self.sleep = time.sleep

    def time(self) -> float:
        return time.time() + self.offset


def test_credentials_are_reused_then_refreshed(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One database credential serves every connection until it nears expiry; then a new
    one is asked for. Neither appears in a printable URL."""
    clock = ShiftedClock()
    monkeypatch.setattr(lakebase_module, "time", clock)
    manager = make_manager(base=lakebase)
    branch = manager.create(scope="session", node_id="t::session")
    issued = count(emulator, "POST generate_database_credential")
    for _ in range(3):
        branch.connect().close()
    assert count(emulator, "POST generate_database_credential") == issued
    first_token = branch.backend.address(branch.name).password
    clock.offset = 3600.0  # the emulator's credentials live an hour
    with branch.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert count(emulator, "POST generate_database_credential") == issued + 1
    second_token = branch.backend.address(branch.name).password
    assert first_token and second_token and first_token != second_token
    for token in (first_token, second_token):
        assert token not in branch.display_url and token not in repr(branch)
    manager.release(branch)


def test_expired_database_token_is_refreshed_on_login_failure(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator
) -> None:
    """A cached token the service stopped accepting early (expiry is checked only at login)
    is replaced once, not fatal."""
    manager = make_manager(base=lakebase)
    with manager.branch() as branch:
        branch.connection.execute("SELECT 1")
        issued = count(emulator, "POST generate_database_credential")
        emulator.expire_credentials()
        with branch.connect() as conn:
            assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        assert count(emulator, "POST generate_database_credential") == issued + 1


def test_project_not_found(make_manager: MakeManager, lakebase: Settings) -> None:
    """A wrong project id is a configuration error naming the setting, not an API 404."""
    with pytest.raises(ConfigError) as failure:
        make_manager(base=lakebase, lakebase_project="nope").create()
    clean_failure(failure.value, "Lakebase project projects/nope not found (dbbranch_lakebase_project)")


def test_revoked_token(make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator) -> None:
    """A refused personal access token says how to refresh it, and is not printed."""
    emulator.revoke_pat("Token expired")
    with pytest.raises(ServerError) as failure:
        make_manager(base=lakebase).create()
    message = clean_failure(failure.value, "Lakebase rejected the credentials*401*Token expired*refresh it")
    assert emulator.token not in message


def test_transient_faults_are_retried(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator
) -> None:
    """Throttling, unavailability, a dropped connection, slow answers and a branch limit
    reached for a moment: all survived, and every injected fault was met."""
    emulator.inject(times=1, status=503, error_code="TEMPORARILY_UNAVAILABLE", method="POST")
    emulator.inject(
        times=1, status=429, error_code="RESOURCE_EXHAUSTED", retry_after=0.2, path_contains="/branches"
    )
    emulator.inject(times=1, drop_connection=True, path_contains="/operations/")
    emulator.inject(times=1, delay=0.5, path_contains="/endpoints")
    emulator.inject(
        times=1,
        operation_error=True,
        error_code="RESOURCE_EXHAUSTED",
        message="too many branches",
        method="POST",
        path_contains="/branches",
    )
    manager = make_manager(base=lakebase)
    with manager.branch() as branch:
        assert branch.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    with emulator.lock:
        assert emulator.faults == [], "a fault was never met: the test did not test its retry"
    manager.close()
    assert ours(emulator, "dbb-") == []


@pytest.mark.parametrize(
    ("fault", "error", "patterns"),
    [
        (
            {"operation_error": True, "error_code": "INTERNAL_ERROR", "message": "disk on fire"},
            LakebaseOperationError,
            ["Lakebase create branch dbbt-* failed: [INTERNAL_ERROR] disk on fire"],
        ),
        (
            {"status": 403, "error_code": "PERMISSION_DENIED", "message": "no CAN MANAGE"},
            ServerError,
            ["Lakebase refused to create branch dbbt-* (403: no CAN MANAGE)*CAN MANAGE on projects/demo"],
        ),
    ],
    ids=["failed-operation", "permission-denied"],
)
def test_refused_create_is_a_clear_error_and_leaves_nothing(
    make_manager: MakeManager,
    lakebase: Settings,
    emulator: LakebaseEmulator,
    fault: dict[str, Any],
    error: type[DbBranchError],
    patterns: list[str],
) -> None:
    """A create the service refuses (a failed operation, a missing permission) names the
    branch and the fix, and no branch of ours remains in the project."""
    emulator.inject(times=1, method="POST", path_contains="/branches", **fault)
    with pytest.raises(error) as failure:
        make_manager(base=lakebase).create()
    clean_failure(failure.value, *patterns)
    assert ours(emulator) == []


def test_ttl_the_service_rejects(
    make_manager: MakeManager, lakebase: Settings, emulator: LakebaseEmulator
) -> None:
    """Lakebase caps TTLs at 30 days: its refusal is passed on, naming the branch."""
    with pytest.raises(DbBranchError) as failure:
        make_manager(base=lakebase, lakebase_template_ttl=90 * 86400).create()
    clean_failure(failure.value, "Lakebase rejected the request to create branch dbbt-*30 days")
    assert ours(emulator) == []


def test_budget_of_zero_is_refused(lakebase: Settings, emulator: LakebaseEmulator, tmp_path: Path) -> None:
    """Wherever the budget comes from, zero branches is not a budget."""
    with pytest.raises(
        ConfigError, match="environment variable DBBRANCH_LAKEBASE_BUDGET: must be at least 1"
    ):
        resolve(env={**os.environ, "DBBRANCH_LAKEBASE_BUDGET": "0"})
    with pytest.raises(ConfigError, match=r"Settings\(lakebase_budget=\.\.\.\): must be at least 1"):
        Settings(lakebase_project=PROJECT, lakebase_budget=0)
    config = LakebaseConfig(project=PROJECT, port=emulator.pg_port, budget=0)
    with pytest.raises(DbBranchError, match=r"must be at least 1 \(dbbranch_lakebase_budget\)"):
        LakebaseBackend(config, lock_root=tmp_path)


def test_default_protected_and_untagged_branches_are_never_deleted(
    lakebase: Settings, emulator: LakebaseEmulator, tmp_path: Path
) -> None:
    """The project's default branch, protected branches and branches without our tag are
    refused by ``drop`` whatever their names look like."""
    backend = LakebaseBackend(LakebaseConfig(project=PROJECT, port=emulator.pg_port), lock_root=tmp_path)
    client = backend.client
    for name, protected in (("dbb-protected", True), ("dbb-untagged", False)):
        spec = BranchSpec(ttl=Duration(seconds=3600), is_protected=protected)
        operation = client.postgres.create_branch(
            parent=f"projects/{PROJECT}", branch=SdkBranch(spec=spec), branch_id=name
        )
        wait_for(finished(client, operation.name()), what=f"{name} to be created")
    for name, reason in (
        ("production", "it is the source, the default or a protected branch"),
        ("dbb-protected", "it is the source, the default or a protected branch"),
        ("dbb-untagged", "it carries no pytest-dbbranch tag"),
    ):
        with pytest.raises(
            NotOursError, match=f"refusing to delete Lakebase branch projects/demo/branches/{name}: {reason}"
        ):
            backend.drop(name)
    assert {branch_id(b) for b in emulator.branches(PROJECT)} == {
        "production",
        "dbb-protected",
        "dbb-untagged",
    }
    backend.close()
