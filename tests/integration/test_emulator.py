"""The Lakebase emulator, driven by the real databricks-sdk client and real PostgreSQL logins.

Nothing is mocked: if the SDK changes what it sends or how it reads answers, or the wire proxy
breaks libpq's handshake, these tests fail the way a user's suite would. One emulator serves
the module (fast timing); tests that count or limit things get a project of their own.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import (
    AlreadyExists,
    BadRequest,
    InternalError,
    InvalidParameterValue,
    NotFound,
    ResourceConflict,
    Unauthenticated,
)
from databricks.sdk.service.postgres import (
    Branch,
    BranchSpec,
    Endpoint,
    EndpointSpec,
    EndpointType,
)
from google.protobuf.duration_pb2 import Duration
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.emulator.backing import EMULATOR_TAG_TOOL as TOOL
from tests.helpers import SECRET

from .emulator_support import client, connect, create_branch, finish, hour, raw_login

PROJECT = "projects/shop"
PRODUCTION = f"{PROJECT}/branches/production"
_numbers = itertools.count(1)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_databricks_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's DATABRICKS_* variables or ~/.databrickscfg must not steer the SDK."""
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="module")
def seed(embedded_server: ServerAddress) -> Iterator[str]:
    """A stand-in for the production snapshot: one table, one row."""
    name = f"emu_seed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(embedded_server.conninfo(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'seed')")
    yield name
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def emu(embedded_server: ServerAddress, seed: str) -> Iterator[LakebaseEmulator]:
    with LakebaseEmulator(embedded_server, timing="fast", operation_delay=0.02) as emulator:
        emulator.create_project("shop", source_database=seed)
        yield emulator


@pytest.fixture
def w(emu: LakebaseEmulator) -> WorkspaceClient:
    return client(emu)


def fresh_project(emu: LakebaseEmulator) -> str:
    """A project of the test's own, for counting branches or calls."""
    project_id = f"p{next(_numbers)}-{uuid.uuid4().hex[:6]}"
    emu.create_project(project_id)
    return f"projects/{project_id}"


def delete_branch(w: WorkspaceClient, name: str) -> None:
    op = finish(w, w.postgres.delete_branch(name, purge=True).name())
    assert op.error is None and op.response == {}


def labels(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("SELECT label FROM items ORDER BY id").fetchall()]


def emulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("lakebase-", "pgproxy-"))]


# -- REST API through the SDK ----------------------------------------------------------------


def test_identity_project_and_not_found(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """The SDK's identity, project and branch reads, and its NotFound for missing objects."""
    assert w.current_user.me().user_name == emu.user_name
    project = w.postgres.get_project(PROJECT)
    assert project.status is not None and project.status.default_branch == PRODUCTION
    assert project.status.pg_version is not None and project.status.pg_version >= 15
    production = w.postgres.get_branch(PRODUCTION)
    assert production.status is not None
    assert production.status.default is True and production.status.is_protected is False
    with pytest.raises(NotFound, match="Project projects/nope not found"):
        w.postgres.get_project("projects/nope")
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{PROJECT}/branches/nope")
    with pytest.raises(NotFound):
        w.postgres.get_operation(f"{PROJECT}/operations/op-nope")
    databases = list(w.postgres.list_databases(PRODUCTION))
    assert [d.status.postgres_database for d in databases if d.status] == ["databricks_postgres"]


def test_branch_forks_data_through_the_proxy(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A branch holds its parent's data at fork time, and writes stay on their branch."""
    child = create_branch(w, PROJECT, "feature-a")
    assert child.name == f"{PROJECT}/branches/feature-a"
    assert child.status is not None and child.status.current_state is not None
    assert child.status.current_state.value == "READY"
    assert child.status.source_branch == PRODUCTION
    with connect(emu, w, child.name) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_database()").fetchone() == ("databricks_postgres",)
        assert labels(conn) == ["seed"]  # the child sees the parent's data at fork time
        conn.execute("INSERT INTO items VALUES (2, 'child only')")
    grandchild = create_branch(w, PROJECT, "feature-a-b", source_branch=child.name)
    with connect(emu, w, PRODUCTION) as conn:
        assert labels(conn) == ["seed"]  # the parent never sees the child's write
    with connect(emu, w, f"{grandchild.name}") as conn:
        assert labels(conn) == ["seed", "child only"]
    delete_branch(w, f"{grandchild.name}")
    delete_branch(w, f"{child.name}")


def test_list_branches_pages(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Listing follows the SDK's paging, in creation order."""
    project = fresh_project(emu)
    for branch_id in ("b-one", "b-two", "b-three"):
        create_branch(w, project, branch_id)
    before = emu.calls().get("GET list_branches", 0)
    names = [b.name for b in w.postgres.list_branches(project, page_size=2)]
    assert names == [f"{project}/branches/{b}" for b in ("production", "b-one", "b-two", "b-three")]
    assert emu.calls().get("GET list_branches", 0) - before == 2
    assert [b["name"] for b in emu.branches(project.split("/")[1])] == names


def test_purged_branch_is_gone_with_its_cluster(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Deleting with purge removes the branch's cluster; deleting it again is NotFound."""
    branch = create_branch(w, PROJECT, "short-lived")
    handle = emu.database_of("shop", "short-lived")
    folders = list(
        Path("/").glob(f"{'dev/shm' if Path('/dev/shm').is_dir() else 'tmp'}/dbbranch-emu-*/{handle}")
    )
    assert folders
    delete_branch(w, f"{branch.name}")
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{branch.name}")
    assert not any(folder.exists() for folder in folders)
    with pytest.raises(NotFound):
        w.postgres.delete_branch(f"{branch.name}", purge=True)


def test_refuses_to_delete_default_protected_and_parents(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """The service's own refusals, which the plugin must survive and report."""
    project = fresh_project(emu)
    with pytest.raises(BadRequest, match="default branch") as excinfo:
        w.postgres.delete_branch(f"{project}/branches/production")
    assert excinfo.value.error_code == "FAILED_PRECONDITION"
    guarded = create_branch(w, project, "guarded", is_protected=True)
    assert guarded.status is not None and guarded.status.is_protected is True
    with pytest.raises(BadRequest, match="protected"):
        w.postgres.delete_branch(f"{guarded.name}")
    parent = create_branch(w, project, "parent")
    child = create_branch(w, project, "kid", source_branch=parent.name)
    with pytest.raises(BadRequest, match="child branches"):
        w.postgres.delete_branch(f"{parent.name}")
    delete_branch(w, f"{child.name}")
    delete_branch(w, f"{parent.name}")


def test_create_branch_validation(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Invalid ids, expiry settings and parents are refused as the service refuses them."""
    project = fresh_project(emu)

    def attempt(branch_id: str, spec: BranchSpec) -> None:
        w.postgres.create_branch(project, Branch(spec=spec), branch_id)

    for bad_id in ("Bad_Id", "1abc", "trailing-", "x" * 64, ""):
        with pytest.raises(InvalidParameterValue):
            attempt(bad_id, BranchSpec(ttl=hour()))
    with pytest.raises(InvalidParameterValue, match="exactly one"):
        attempt("no-expiry-given", BranchSpec())
    with pytest.raises(BadRequest, match="exactly one"):
        attempt("two-given", BranchSpec(ttl=hour(), no_expiry=True))
    with pytest.raises(BadRequest, match="30 days"):
        attempt("too-long", BranchSpec(ttl=Duration(seconds=31 * 86400)))
    with pytest.raises(NotFound):
        attempt("orphan", BranchSpec(ttl=hour(), source_branch=f"{project}/branches/missing"))
    create_branch(w, project, "taken")
    with pytest.raises(AlreadyExists):
        attempt("taken", BranchSpec(ttl=hour()))
    assert sorted(b["branch_id"] for b in emu.branches(project.split("/")[1])) == ["production", "taken"]


def test_ttl_really_expires(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A branch past its TTL is deleted, cluster and all, without a client asking."""
    branch = create_branch(w, PROJECT, "ephemeral", ttl=Duration(seconds=1))
    deadline = time.monotonic() + 8
    while True:
        try:
            w.postgres.get_branch(f"{branch.name}")
        except NotFound:
            break
        assert time.monotonic() < deadline, "the branch outlived its TTL"
        time.sleep(0.05)
    assert "ephemeral" not in [b["branch_id"] for b in emu.branches("shop")]


def test_one_read_write_endpoint(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Every branch has its primary read-write endpoint, and only one."""
    child = create_branch(w, PROJECT, "auto")
    for branch in (PRODUCTION, f"{child.name}"):
        endpoints = list(w.postgres.list_endpoints(branch))
        assert [e.endpoint_id for e in endpoints] == ["primary"]
    spec = EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)
    with pytest.raises(ResourceConflict):
        w.postgres.create_endpoint(f"{child.name}", Endpoint(spec=spec), "second")
    delete_branch(w, f"{child.name}")


# -- PostgreSQL logins -----------------------------------------------------------------------


def test_bad_and_expired_tokens_are_refused(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Logins are checked as Lakebase checks them: wrong token, other user, missing database,
    expired token (at login only, SQLSTATE 28P01 like a wrong password)."""
    conn = connect(emu, w, PRODUCTION)
    endpoint = w.postgres.get_endpoint(f"{PRODUCTION}/endpoints/primary")
    assert endpoint.status is not None and endpoint.status.hosts is not None
    host = endpoint.status.hosts.host
    assert host is not None
    token = w.postgres.generate_database_credential(endpoint=f"{endpoint.name}").token
    assert token
    fields = raw_login(host, emu.pg_port, user=emu.user_name, password="not-a-token")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert fields["M"] == f'password authentication failed for user "{emu.user_name}"'
    assert raw_login(host, emu.pg_port, user="mallory@example.com", password=token)["C"] == "28P01"
    assert raw_login(host, emu.pg_port, user=emu.user_name, password=token, database="other")["C"] == "3D000"

    emu.expire_credentials()
    fields = raw_login(host, emu.pg_port, user=emu.user_name, password=token)
    assert fields["C"] == "28P01" and "expired" in fields["D"]
    with pytest.raises(psycopg.OperationalError, match="expired"):
        psycopg.connect(
            host=host,
            port=emu.pg_port,
            dbname="databricks_postgres",
            user=emu.user_name,
            password=token,
            sslmode="require",
        )
    # Expiry is checked at login only: the open session keeps working, a new token logs in.
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()
    with connect(emu, w, PRODUCTION) as fresh:
        assert labels(fresh) == ["seed"]


def test_deleted_branch_token_and_session_are_cut(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Deleting a branch ends its sessions, and its endpoint's address stops answering."""
    branch = create_branch(w, PROJECT, "doomed")
    conn = connect(emu, w, f"{branch.name}")
    host = emu.endpoint_host("shop", "doomed")
    assert host is not None
    token = w.postgres.generate_database_credential(endpoint=f"{branch.name}/endpoints/primary").token
    assert token
    delete_branch(w, f"{branch.name}")
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=host, port=emu.pg_port, user=emu.user_name, password=token, sslmode="require")
    with pytest.raises(NotFound):
        w.postgres.generate_database_credential(endpoint=f"{branch.name}/endpoints/primary")


def test_direct_tls_and_cancel(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """libpq's direct TLS negotiation and query cancellation pass through the proxy."""
    with connect(emu, w, PRODUCTION, sslnegotiation="direct") as conn:
        assert conn.pgconn.ssl_in_use
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        timer.join()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_branching_a_parent_in_use(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A branch forks its parent while sessions are open on it, with everything committed."""
    parent = create_branch(w, PROJECT, "busy-parent")
    with connect(emu, w, parent.name) as session:
        session.execute("INSERT INTO items VALUES (3, 'written before the fork')")
        child = create_branch(w, PROJECT, "while-busy", source_branch=parent.name)
        assert session.execute("SELECT count(*) FROM items").fetchone() == (2,)
    with connect(emu, w, f"{child.name}") as conn:
        assert labels(conn) == ["seed", "written before the fork"]
    delete_branch(w, f"{child.name}")
    delete_branch(w, f"{parent.name}")


def test_database_storage_with_a_password_protected_backing_server(
    embedded_server: ServerAddress, seed: str
) -> None:
    """The older storage (one database per branch on a shared server, sessions as its
    superuser) still works: SCRAM towards the backing server, pg_dump/pg_restore with its password."""
    backing = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    )
    with LakebaseEmulator(backing, storage="database", timing="fast", operation_delay=0.0) as emulator:
        emulator.create_project("shop")
        w = client(emulator)
        with connect(emulator, w, PRODUCTION) as session:
            session.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
            session.execute("INSERT INTO items VALUES (1, 'scram')")
            assert session.execute("SELECT current_user").fetchone() == ("secretive",)
            child = create_branch(w, PROJECT, "dumped")  # parent in use: dump path, with PGPASSWORD
        with connect(emulator, w, f"{child.name}") as conn:
            assert labels(conn) == ["scram"]


# -- fault injection -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_throttling_is_retried_by_the_sdk(w: WorkspaceClient, emu: LakebaseEmulator, status: int) -> None:
    """Throttling answers are shaped so that the SDK retries them."""
    before = emu.calls().get("GET get_branch", 0)
    emu.inject(status=status, error_code="TEMPORARILY_UNAVAILABLE", retry_after=0, method="GET")
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION
    assert emu.calls().get("GET get_branch", 0) - before == 2


def test_persistent_errors_surface(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A server error that persists reaches the client, and clearing faults ends it."""
    emu.inject(times=2, status=500, message="backend exploded", path_contains="/branches/production")
    with pytest.raises(InternalError, match="backend exploded"):
        w.postgres.get_branch(PRODUCTION)
    emu.clear_faults()
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION


def test_dropped_connection_is_retried(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A connection dropped without an answer is retried by the SDK."""
    before = emu.calls().get("GET get_project", 0)
    emu.inject(drop_connection=True, method="GET", path_contains="/projects/shop")
    assert w.postgres.get_project(PROJECT).name == PROJECT
    assert emu.calls().get("GET get_project", 0) - before == 2


def test_slow_answer(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A slow answer is slow, and is not retried."""
    before = emu.calls().get("GET get_branch", 0)
    emu.inject(delay=0.4, method="GET")
    started = time.monotonic()
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION
    assert time.monotonic() - started >= 0.4
    assert emu.calls().get("GET get_branch", 0) - before == 1


def test_operation_error(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A failed operation leaves no branch, and the id can be used again."""
    emu.inject(operation_error=True, error_code="INTERNAL_ERROR", message="clone failed", method="POST")
    op = finish(
        w, w.postgres.create_branch(PROJECT, Branch(spec=BranchSpec(no_expiry=True)), "unlucky").name()
    )
    assert op.error is not None and op.error.error_code is not None
    assert (op.error.error_code.value, op.error.message) == ("INTERNAL_ERROR", "clone failed")
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{PROJECT}/branches/unlucky")
    assert create_branch(w, PROJECT, "unlucky").name == f"{PROJECT}/branches/unlucky"
    delete_branch(w, f"{PROJECT}/branches/unlucky")


def test_revoked_and_wrong_pat() -> None:
    """A wrong or revoked personal access token is refused with the service's message."""
    with LakebaseEmulator(timing="fast") as emulator:
        w = client(emulator)
        assert list(w.postgres.list_projects()) == []
        with pytest.raises(Unauthenticated):
            list(client(emulator, token="dapi-wrong").postgres.list_projects())
        emulator.revoke_pat("Token expired")
        with pytest.raises(Unauthenticated, match="Token expired"):
            list(w.postgres.list_projects())


# -- lifecycle and command line --------------------------------------------------------------


def test_stop_leaves_nothing(embedded_server: ServerAddress, seed: str) -> None:
    """stop() stops and removes this emulator's clusters, ends its threads, and frees its
    endpoint addresses; the seed on the backing server is untouched."""
    others = set(emulator_threads())  # the module's emulator runs too
    emulator = LakebaseEmulator(embedded_server, timing="fast", operation_delay=0.0).start()
    emulator.create_project("shop", source_database=seed)
    w = client(emulator)
    create_branch(w, PROJECT, "left-behind")
    conn = connect(emulator, w, f"{PROJECT}/branches/left-behind")
    host = emulator.endpoint_host("shop", "left-behind")
    root = emulator.storage.clusters.root  # type: ignore[attr-defined]
    assert root.is_dir()
    emulator.stop()
    conn.close()
    assert not root.exists()
    assert set(emulator_threads()) <= others
    assert host is not None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=host, port=5432, user="x", password="y", sslmode="require", connect_timeout=2)
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (seed,)).fetchone() == (1,)


def test_database_storage_drops_only_its_own_databases(embedded_server: ServerAddress, seed: str) -> None:
    """In the older storage, stop() drops the databases of this emulator instance only."""
    decoy = f"emu_decoy_{uuid.uuid4().hex[:8]}"
    foreign_tag = json.dumps({"tool": TOOL, "instance": "someone-else"}, separators=(",", ":"))
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(decoy)))
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(decoy), sql.Literal(foreign_tag))
        )
    try:
        emulator = LakebaseEmulator(embedded_server, storage="database", timing="fast").start()
        emulator.create_project("shop", source_database=seed)
        made = emulator.database_of("shop", "production")
        emulator.stop()
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
            names = {row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()}
        assert made not in names
        assert {seed, decoy} <= names
    finally:
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(decoy)))


def test_http_shapes_without_the_sdk(emu: LakebaseEmulator) -> None:
    """What the SDK relies on but does not show: open host metadata, JSON errors everywhere,
    and 501 NOT_IMPLEMENTED (not 404) for APIs the emulator lacks."""
    import urllib.error
    import urllib.request

    def fetch(path: str, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
        request = urllib.request.Request(emu.url + path, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert fetch("/.well-known/databricks-config") == (200, {})
    status, body = fetch("/api/2.0/postgres/projects/shop")
    assert status == 401 and body["error_code"] == "UNAUTHENTICATED"
    status, body = fetch("/api/2.0/postgres/projects/shop/branches/production/roles", emu.token)
    assert status == 501 and body["error_code"] == "NOT_IMPLEMENTED"
    status, body = fetch("/api/2.0/postgres/projects/shop/branches?page_token=garbage", emu.token)
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    status, body = fetch("/api/2.0/postgres/projects/shop/branches?page_size=1", emu.token)
    assert status == 200 and len(body["branches"]) == 1


def test_command_line(embedded_server: ServerAddress, seed: str) -> None:
    """The command line prints the variables a suite needs and cleans up on SIGTERM."""
    argv = [sys.executable, "-m", "pytest_dbbranch.emulator", "--backing-url", embedded_server.url()]
    argv += ["--project", "shop", "--project", "other", "--source-database", seed, "--token", "dapi-cli"]
    argv += ["--fast", "--identity", "ci-bot@example.com=dapi-ci"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        env = dict(process.stdout.readline().strip().split("=", 1) for _ in range(4))
        assert set(env) == {
            "DATABRICKS_HOST",
            "DATABRICKS_TOKEN",
            "DBBRANCH_LAKEBASE_PORT",
            "DBBRANCH_LAKEBASE_SSLMODE",
        }
        assert env["DATABRICKS_TOKEN"] == "dapi-cli" and env["DBBRANCH_LAKEBASE_SSLMODE"] == "require"
        config = Config(host=env["DATABRICKS_HOST"], token="dapi-ci", retry_timeout_seconds=5)
        w = WorkspaceClient(config=config)
        assert w.current_user.me().user_name == "ci-bot@example.com"
        assert w.postgres.get_project("projects/other").name == "projects/other"
        endpoint = w.postgres.get_endpoint("projects/shop/branches/production/endpoints/primary")
        assert endpoint.status is not None and endpoint.status.hosts is not None
        token = w.postgres.generate_database_credential(endpoint=f"{endpoint.name}").token
        with psycopg.connect(
            host=endpoint.status.hosts.host,
            port=int(env["DBBRANCH_LAKEBASE_PORT"]),
            user="ci-bot@example.com",
            password=token,
            dbname="databricks_postgres",
            sslmode="require",
        ) as conn:
            assert conn.execute("SELECT label FROM items").fetchall() == [("seed",)]
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
