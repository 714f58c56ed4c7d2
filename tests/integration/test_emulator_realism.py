"""The emulator behaves like the service where a client would notice: implicit endpoints whose
host comes a moment later, a host per endpoint on port 5432, expiring project-scoped tokens,
scale to zero, soft delete, branch rules and limits, update_branch, TLS, 501 for missing APIs;
and each older behaviour is still one switch away."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import AlreadyExists, BadRequest, NotFound, ResourceExhausted
from databricks.sdk.errors import NotImplemented as ApiNotImplemented
from databricks.sdk.service.postgres import Branch, BranchSpec, Endpoint, EndpointSpec, EndpointType
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from pytest_dbbranch.emulator import LakebaseEmulator

from .emulator_support import client, connect, create_branch, endpoint_with_host, finish, hour, raw_login

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def emu() -> Iterator[LakebaseEmulator]:
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("DATABRICKS_")}
    with LakebaseEmulator(
        operation_delay=0.05,
        compute_start_delay=0.4,
        suspend_timeout=1.0,
        cold_start_delay=0.3,
        credential_lifetime=1.5,
        branch_limit=4,
    ) as emulator:
        yield emulator
    os.environ.update(saved)


@pytest.fixture
def w(emu: LakebaseEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> WorkspaceClient:
    monkeypatch.setenv("HOME", str(tmp_path))
    return client(emu)


def project(emu: LakebaseEmulator) -> str:
    project_id = f"r{next(_numbers)}-{uuid.uuid4().hex[:6]}"
    emu.create_project(project_id)
    return f"projects/{project_id}"


def start_create(w: WorkspaceClient, parent: str, branch_id: str, spec: BranchSpec) -> str:
    return w.postgres.create_branch(parent, Branch(spec=spec), branch_id).name()


def test_implicit_primary_endpoint_gets_its_host_a_moment_later(
    emu: LakebaseEmulator, w: WorkspaceClient
) -> None:
    parent = project(emu)
    op = finish(w, start_create(w, parent, "fresh", BranchSpec(ttl=hour())))
    assert op.error is None
    endpoint = w.postgres.get_endpoint(f"{parent}/branches/fresh/endpoints/primary")
    assert (
        endpoint.status is not None and endpoint.status.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_WRITE
    )
    assert endpoint.status.hosts is None  # the compute is still starting
    assert endpoint.status.current_state is not None and endpoint.status.current_state.value == "INIT"
    ready = endpoint_with_host(w, f"{parent}/branches/fresh")
    assert ready.status is not None and ready.status.current_state is not None
    assert ready.status.current_state.value == "ACTIVE"
    assert [e.endpoint_id for e in w.postgres.list_endpoints(f"{parent}/branches/production")] == ["primary"]


def test_each_endpoint_has_its_own_host_on_5432(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    """Sessions are routed by the address they arrive on, not by the token they carry."""
    parent = project(emu)
    names = [create_branch(w, parent, branch_id).name for branch_id in ("left", "right")]
    assert names[0] and names[1]
    for name in names:
        with connect(emu, w, name) as conn:
            conn.execute("CREATE TABLE whoami (name text)")
            conn.execute("INSERT INTO whoami VALUES (%s)", (name,))
    endpoints = [endpoint_with_host(w, name) for name in names]
    found = [e.status.hosts.host for e in endpoints if e.status and e.status.hosts]
    assert len(set(found)) == 2
    assert all(h and h.startswith("127.") and h != "127.0.0.1" for h in found)
    token = w.postgres.generate_database_credential(endpoint=f"{endpoints[0].name}").token
    for host, name in zip(found, names, strict=True):
        with psycopg.connect(
            host=host, user=emu.user_name, password=token, dbname="databricks_postgres", sslmode="require"
        ) as conn:
            assert conn.execute("SELECT name FROM whoami").fetchone() == (name,)


def test_tokens_expire_at_login_with_28p01(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    endpoint = endpoint_with_host(w, f"{project(emu)}/branches/production")
    assert endpoint.status and endpoint.status.hosts and endpoint.status.hosts.host
    host = endpoint.status.hosts.host
    credential = w.postgres.generate_database_credential(endpoint=f"{endpoint.name}")
    assert credential.token and credential.expire_time
    lifetime = credential.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=1) < lifetime <= timedelta(seconds=1.5)
    session = psycopg.connect(
        host=host,
        user=emu.user_name,
        password=credential.token,
        dbname="databricks_postgres",
        sslmode="require",
    )
    session.execute("SELECT pg_sleep(1.6)")  # a running query keeps the compute from suspending
    fields = raw_login(host, 5432, user=emu.user_name, password=credential.token)
    assert (fields["C"], fields["M"]) == (
        "28P01",
        f'password authentication failed for user "{emu.user_name}"',
    )
    assert "expired" in fields["D"]
    assert session.execute("SELECT 1").fetchone() == (1,)  # checked at login only
    session.close()
    with pytest.raises(BadRequest, match="between 300s and 3600s"):
        w.postgres.generate_database_credential(endpoint=f"{endpoint.name}", ttl=Duration(seconds=100))


def test_compute_scales_to_zero_and_wakes(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    branch = f"{project(emu)}/branches/production"
    conn = connect(emu, w, branch)
    conn.execute("CREATE TEMP TABLE scratch (id int)")
    deadline = time.monotonic() + 5
    while True:
        endpoint = w.postgres.get_endpoint(f"{branch}/endpoints/primary")
        assert endpoint.status is not None and endpoint.status.current_state is not None
        if endpoint.status.current_state.value == "IDLE":
            break
        assert time.monotonic() < deadline, "the idle compute never suspended"
        time.sleep(0.1)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")  # the idle session was closed with the compute
    conn.close()
    started = time.monotonic()
    with connect(emu, w, branch) as fresh:
        assert time.monotonic() - started >= 0.3  # the cold start
        assert fresh.execute("SELECT to_regclass('scratch')").fetchone() == (None,)
    endpoint = w.postgres.get_endpoint(f"{branch}/endpoints/primary")
    assert endpoint.status is not None and endpoint.status.current_state is not None
    assert endpoint.status.current_state.value == "ACTIVE"


def test_soft_delete_undelete_and_purge(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    parent = project(emu)
    name = create_branch(w, parent, "kept").name
    assert name
    with connect(emu, w, name) as conn:
        conn.execute("CREATE TABLE survives (id int)")
    assert finish(w, w.postgres.delete_branch(name).name()).error is None
    with pytest.raises(NotFound):
        w.postgres.get_branch(name)
    assert [b.branch_id for b in w.postgres.list_branches(parent)] == ["production"]
    deleted = [b for b in w.postgres.list_branches(parent, show_deleted=True) if b.name == name]
    assert deleted and deleted[0].status is not None and deleted[0].status.delete_time is not None
    assert deleted[0].status.purge_time is not None
    with pytest.raises(AlreadyExists, match="soft-deleted"):
        w.postgres.create_branch(parent, Branch(spec=BranchSpec(ttl=hour())), "kept")
    op = finish(w, w.postgres.undelete_branch(name).name())
    assert op.error is None
    with connect(emu, w, name) as conn:
        assert conn.execute("SELECT to_regclass('survives')::text").fetchone() == ("survives",)
    assert finish(w, w.postgres.delete_branch(name, purge=True).name()).error is None
    assert name not in [b.name for b in w.postgres.list_branches(parent, show_deleted=True)]


def test_one_protected_branch_and_no_expiry_on_protected_or_default(
    emu: LakebaseEmulator, w: WorkspaceClient
) -> None:
    parent = project(emu)
    create_branch(w, parent, "guarded", is_protected=True)
    with pytest.raises(BadRequest, match="only one"):
        w.postgres.create_branch(parent, Branch(spec=BranchSpec(no_expiry=True, is_protected=True)), "second")
    other = create_branch(w, parent, "plain").name
    assert other
    spec = Branch(spec=BranchSpec(is_protected=True))
    with pytest.raises(BadRequest, match="only one"):
        w.postgres.update_branch(other, spec, FieldMask(paths=["spec.is_protected"]))
    with pytest.raises(BadRequest, match="protected branch cannot have an expiration"):
        w.postgres.create_branch(parent, Branch(spec=BranchSpec(ttl=hour(), is_protected=True)), "odd")
    with pytest.raises(BadRequest, match="default branch cannot have an expiration"):
        w.postgres.update_branch(
            f"{parent}/branches/production",
            Branch(spec=BranchSpec(ttl=hour())),
            FieldMask(paths=["spec.ttl"]),
        )


def test_expiry_and_children_are_exclusive(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    """Default rule: a branch cannot have both an expiration and children."""
    parent = project(emu)
    expiring = create_branch(w, parent, "expiring", ttl=hour()).name
    with pytest.raises(BadRequest, match="cannot have child branches"):
        w.postgres.create_branch(parent, Branch(spec=BranchSpec(ttl=hour(), source_branch=expiring)), "kid")
    lasting = create_branch(w, parent, "lasting").name
    create_branch(w, parent, "its-kid", source_branch=lasting, ttl=hour())
    with pytest.raises(BadRequest, match="child branches and cannot have an expiration"):
        w.postgres.update_branch(
            f"{lasting}", Branch(spec=BranchSpec(ttl=hour())), FieldMask(paths=["spec.expiration"])
        )


def test_update_branch(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    parent = project(emu)
    branch = create_branch(w, parent, "patched", ttl=hour())
    assert branch.name and branch.create_time and branch.status and branch.status.expire_time
    op = w.postgres.update_branch(
        branch.name, Branch(spec=BranchSpec(ttl=Duration(seconds=7200))), FieldMask(paths=["spec.ttl"])
    )
    updated = Branch.from_dict(finish(w, op.name()).response or {})
    assert updated.status and updated.status.expire_time
    expected = branch.create_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=7200)  # ttl counts from creation
    assert abs(updated.status.expire_time.ToDatetime(tzinfo=UTC) - expected) < timedelta(seconds=1)
    op = w.postgres.update_branch(
        branch.name, Branch(spec=BranchSpec(no_expiry=True)), FieldMask(paths=["spec.expiration"])
    )
    assert finish(w, op.name()).error is None
    fetched = w.postgres.get_branch(branch.name)
    assert fetched.status is not None and fetched.status.expire_time is None
    op = w.postgres.update_branch(
        branch.name, Branch(spec=BranchSpec(is_protected=True)), FieldMask(paths=["spec.is_protected"])
    )
    assert finish(w, op.name()).error is None
    assert w.postgres.get_branch(branch.name).status.is_protected is True  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match="not updatable"):
        w.postgres.update_branch(
            branch.name, Branch(spec=BranchSpec()), FieldMask(paths=["spec.source_branch"])
        )


def test_tls_is_required(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    endpoint = endpoint_with_host(w, f"{project(emu)}/branches/production")
    assert endpoint.status and endpoint.status.hosts and endpoint.status.hosts.host
    token = w.postgres.generate_database_credential(endpoint=f"{endpoint.name}").token
    assert token
    fields = raw_login(endpoint.status.hosts.host, 5432, user=emu.user_name, password=token, tls=False)
    assert (fields["C"], fields["M"]) == ("28000", "SSL/TLS required")
    with pytest.raises(psycopg.OperationalError, match="SSL/TLS required"):
        psycopg.connect(
            host=endpoint.status.hosts.host, user=emu.user_name, password=token, sslmode="disable"
        )


def test_missing_apis_answer_501(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    with pytest.raises(ApiNotImplemented):
        list(w.postgres.list_roles(f"{project(emu)}/branches/production"))


def test_branch_limit_refuses_the_request(emu: LakebaseEmulator, w: WorkspaceClient) -> None:
    """Four unarchived branches here, production included; soft-deleted ones do not count."""
    parent = project(emu)
    names = [create_branch(w, parent, f"b{n}").name for n in range(3)]
    with pytest.raises(ResourceExhausted, match="limit of 4") as excinfo:
        w.postgres.create_branch(parent, Branch(spec=BranchSpec(ttl=hour())), "one-too-many")
    assert excinfo.value.error_code == "RESOURCE_EXHAUSTED"
    assert finish(w, w.postgres.delete_branch(f"{names[0]}").name()).error is None
    create_branch(w, parent, "fits-again")


def test_older_behaviours_behind_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One emulator with every switch turned back: single printed port routed by the endpoint
    option, no implicit endpoint, plaintext logins, purging deletes, no branch rules, children
    under expiring branches, and the limit as a failed operation."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with LakebaseEmulator(
        timing="fast",
        host_style="single",
        auto_endpoint=False,
        tls_required=False,
        soft_delete=False,
        branch_rules=False,
        ttl_with_children="allow",
        limit_error="operation",
        branch_limit=3,
    ) as emu:
        emu.create_project("old")
        w = client(emu)
        assert list(w.postgres.list_endpoints("projects/old/branches/production")) == []
        parent = create_branch(w, "projects/old", "parent", ttl=hour(), is_protected=True).name
        child = create_branch(w, "projects/old", "child", ttl=hour(), source_branch=parent).name
        assert parent and child
        spec = EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)
        made = []
        for branch in (parent, child):
            op = finish(w, w.postgres.create_endpoint(branch, Endpoint(spec=spec), "primary").name())
            made.append(Endpoint.from_dict(op.response or {}))
        assert all(e.status and e.status.hosts and e.status.hosts.host == "127.0.0.1" for e in made)
        token = w.postgres.generate_database_credential(endpoint=f"{made[0].name}").token
        params: dict[str, Any] = {"host": "127.0.0.1", "port": emu.pg_port, "user": emu.user_name}
        params.update(password=token, dbname="databricks_postgres", sslmode="disable")
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute("CREATE TABLE on_parent (id int)")
        with psycopg.connect(**params, options=f"endpoint={made[1].uid}") as conn:
            assert conn.execute("SELECT to_regclass('on_parent')").fetchone() == (None,)
        op = finish(
            w, w.postgres.create_branch("projects/old", Branch(spec=BranchSpec(ttl=hour())), "over").name()
        )
        assert op.error is not None and op.error.error_code is not None
        assert op.error.error_code.value == "RESOURCE_EXHAUSTED"
        assert finish(w, w.postgres.delete_branch(child).name()).error is None
        assert child not in [b.name for b in w.postgres.list_branches("projects/old", show_deleted=True)]


def test_refuse_only_adding_an_expiry_to_a_parent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The other reading of the unverified rule: children under an expiring branch are fine,
    but a branch that has children cannot be given an expiration."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with LakebaseEmulator(timing="fast", ttl_with_children="refuse-ttl") as emu:
        emu.create_project("rules")
        w = client(emu)
        expiring = create_branch(w, "projects/rules", "expiring", ttl=hour()).name
        create_branch(w, "projects/rules", "kid", ttl=hour(), source_branch=expiring)
        lasting = create_branch(w, "projects/rules", "lasting").name
        create_branch(w, "projects/rules", "its-kid", ttl=hour(), source_branch=lasting)
        with pytest.raises(BadRequest, match="child branches and cannot have an expiration"):
            w.postgres.update_branch(
                f"{lasting}", Branch(spec=BranchSpec(ttl=hour())), FieldMask(paths=["spec.ttl"])
            )
