"""Identities, roles and per-branch databases: what a CI identity that is not the project owner
can and cannot do, as Lakebase documents it (one PostgreSQL cluster per branch)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk import WorkspaceClient

from pytest_dbbranch.emulator import LakebaseEmulator

from .emulator_support import client, connect, create_branch, endpoint_with_host, raw_login

CI = "ci-bot@example.com"
ACME = "projects/acme"
PRODUCTION = f"{ACME}/branches/production"


@pytest.fixture(scope="module")
def emu() -> Iterator[LakebaseEmulator]:
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("DATABRICKS_")}
    with LakebaseEmulator(timing="fast", operation_delay=0.02) as emulator:
        emulator.create_project("acme")
        emulator.create_project("other")
        yield emulator
    os.environ.update(saved)


@pytest.fixture(scope="module")
def ci_token(emu: LakebaseEmulator) -> str:
    """The CI identity's role is made on production before any branch exists."""
    return emu.add_identity(CI)


@pytest.fixture
def owner(emu: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> WorkspaceClient:
    monkeypatch.setenv("HOME", str(tmp_path))
    return client(emu)


@pytest.fixture
def ci(emu: LakebaseEmulator, ci_token: str, owner: WorkspaceClient) -> WorkspaceClient:
    return client(emu, ci_token)


def fetch(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row is not None and len(row) == 1 else row


def test_ci_identity_is_not_a_superuser_nor_the_owner(emu: LakebaseEmulator, ci: WorkspaceClient) -> None:
    assert ci.current_user.me().user_name == CI
    branch = create_branch(ci, ACME, "ci-rights")
    with connect(emu, ci, branch.name) as conn:
        assert fetch(conn, "SELECT current_user") == CI
        assert fetch(conn, "SELECT current_database()") == "databricks_postgres"
        assert fetch(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        assert fetch(conn, "SELECT pg_has_role(current_user, 'databricks_superuser', 'MEMBER')") is True
        assert fetch(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = 'databricks_superuser'") is False
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'databricks_postgres'"
        assert fetch(conn, owner) == emu.user_name
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COMMENT ON DATABASE databricks_postgres IS 'tag'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE DATABASE copied TEMPLATE databricks_postgres")
        conn.execute("CREATE DATABASE mine")
        assert fetch(conn, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mine'") == CI
        conn.execute("CREATE TABLE in_public (id int)")  # rights on databricks_postgres's schema
    with connect(emu, ci, branch.name, dbname="mine") as conn:
        conn.execute("COMMENT ON DATABASE mine IS 'the CI identity owns it'")


def test_the_owner_owns_databricks_postgres(emu: LakebaseEmulator, owner: WorkspaceClient) -> None:
    branch = create_branch(owner, ACME, "owner-rights")
    with connect(emu, owner, branch.name) as conn:
        assert fetch(conn, "SELECT current_user") == emu.user_name
        assert fetch(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        conn.execute("COMMENT ON DATABASE databricks_postgres IS 'tag'")
        conn.execute("CREATE DATABASE owner_copy TEMPLATE databricks_postgres")


def test_each_branch_sees_only_its_own_databases(emu: LakebaseEmulator, ci: WorkspaceClient) -> None:
    """A database made in branch A is not in B or production; A's child has it, as of the fork."""
    a = create_branch(ci, ACME, "scope-a")
    b = create_branch(ci, ACME, "scope-b")
    with connect(emu, ci, a.name) as conn:
        conn.execute("CREATE DATABASE made_in_a")
    child = create_branch(ci, ACME, "scope-a-child", source_branch=a.name)
    with connect(emu, ci, a.name) as conn:
        conn.execute("CREATE DATABASE after_the_fork")

    def databases(branch: str | None) -> set[str]:
        with connect(emu, ci, branch) as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}

    assert {"made_in_a", "after_the_fork"} <= databases(a.name)
    assert "made_in_a" not in databases(b.name) | databases(PRODUCTION)
    inherited = databases(child.name)
    assert "made_in_a" in inherited and "after_the_fork" not in inherited
    with connect(emu, ci, child.name) as conn:
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'made_in_a'"
        assert fetch(conn, owner) == CI


def test_tokens_are_scoped_to_identity_and_project(
    emu: LakebaseEmulator, ci: WorkspaceClient, owner: WorkspaceClient
) -> None:
    """A token works on every endpoint of its project, for its identity only, and not on
    another project's endpoints."""
    branch = create_branch(ci, ACME, "token-scope")
    production = endpoint_with_host(ci, PRODUCTION)
    on_branch = endpoint_with_host(ci, branch.name)
    assert production.status and production.status.hosts and production.status.hosts.host
    assert on_branch.status and on_branch.status.hosts and on_branch.status.hosts.host
    token = ci.postgres.generate_database_credential(endpoint=f"{on_branch.name}").token
    assert token
    with psycopg.connect(
        host=production.status.hosts.host,
        user=CI,
        password=token,
        dbname="databricks_postgres",
        sslmode="require",
    ) as conn:
        assert fetch(conn, "SELECT current_user") == CI
    assert raw_login(on_branch.status.hosts.host, 5432, user=emu.user_name, password=token)["C"] == "28P01"
    elsewhere = endpoint_with_host(owner, "projects/other/branches/production")
    assert elsewhere.status and elsewhere.status.hosts and elsewhere.status.hosts.host
    fields = raw_login(elsewhere.status.hosts.host, 5432, user=CI, password=token)
    assert fields["C"] == "28P01" and "another project" in fields["D"]


def test_roles_are_inherited_at_fork_time(emu: LakebaseEmulator, owner: WorkspaceClient) -> None:
    """An identity added after a branch was made has no role there, only on later branches."""
    older = create_branch(owner, ACME, "before-bot")
    late = client(emu, emu.add_identity("late-bot@example.com"))
    newer = create_branch(late, ACME, "after-bot")
    with connect(emu, late, newer.name) as conn:
        assert fetch(conn, "SELECT current_user") == "late-bot@example.com"
    with pytest.raises(psycopg.OperationalError, match=r"late-bot@example\.com"):
        connect(emu, late, older.name)
