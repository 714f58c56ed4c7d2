"""The Lakebase emulator, driven by the real databricks-sdk client and real PostgreSQL logins.

Nothing is mocked: if the SDK changes what it sends or how it reads answers, or the wire proxy
breaks libpq's handshake, these tests fail the way a user's suite would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
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
    Operation,
)
from google.protobuf.duration_pb2 import Duration
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.emulator.backing import EMULATOR_TAG_TOOL as TOOL
from tests.helpers import SECRET

PROJECT = "projects/shop"
PRODUCTION = f"{PROJECT}/branches/production"


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


@pytest.fixture
def emu(embedded_server: ServerAddress, seed: str) -> Iterator[LakebaseEmulator]:
    with LakebaseEmulator(embedded_server, operation_delay=0.02) as emulator:
        emulator.create_project("shop", source_database=seed)
        yield emulator


def client(emulator: LakebaseEmulator, token: str | None = None) -> WorkspaceClient:
    config = Config(
        host=emulator.url, token=token or emulator.token, retry_timeout_seconds=5, http_timeout_seconds=10
    )
    return WorkspaceClient(config=config)


@pytest.fixture
def w(emu: LakebaseEmulator) -> WorkspaceClient:
    return client(emu)


# -- helpers ---------------------------------------------------------------------------------


def finish(w: WorkspaceClient, name: str, timeout: float = 10.0) -> Operation:
    """Poll an operation quickly (the SDK's wait() sleeps more than a second between polls)."""
    deadline = time.monotonic() + timeout
    while True:
        op = w.postgres.get_operation(name)
        if op.done:
            return op
        assert time.monotonic() < deadline, f"operation {name} not done after {timeout}s"
        time.sleep(0.01)


def create_branch(w: WorkspaceClient, branch_id: str, **spec: Any) -> Branch:
    spec.setdefault("ttl", Duration(seconds=3600))
    op = finish(w, w.postgres.create_branch(PROJECT, Branch(spec=BranchSpec(**spec)), branch_id).name())
    assert op.error is None, op.error
    assert op.response is not None
    return Branch.from_dict(op.response)


def delete_branch(w: WorkspaceClient, name: str) -> Operation:
    return finish(w, w.postgres.delete_branch(name).name())


def connect(
    emulator: LakebaseEmulator, w: WorkspaceClient, branch: str, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Log in the way the plugin does on real Lakebase: endpoint, credential, token as password."""
    endpoints = [
        e
        for e in w.postgres.list_endpoints(branch)
        if e.status and e.status.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_WRITE
    ]
    if endpoints:
        endpoint = endpoints[0]
    else:
        spec = EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)
        op = finish(w, w.postgres.create_endpoint(branch, Endpoint(spec=spec), "primary").name())
        assert op.response is not None
        endpoint = Endpoint.from_dict(op.response)
    assert endpoint.name and endpoint.status and endpoint.status.hosts
    token = w.postgres.generate_database_credential(endpoint=endpoint.name).token
    params: dict[str, Any] = {
        "host": endpoint.status.hosts.host,
        "port": emulator.pg_port,
        "dbname": "databricks_postgres",
        "user": w.current_user.me().user_name,
        "password": token,
        "sslmode": "require",
        "autocommit": True,
        "connect_timeout": 5,
    }
    params.update(kwargs)
    return psycopg.connect(**params)


def labels(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("SELECT label FROM items ORDER BY id").fetchall()]


def database_exists(address: ServerAddress, name: str) -> bool:
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def raw_login(
    port: int, *, user: str, password: str, database: str = "databricks_postgres"
) -> dict[str, str]:
    """A plaintext login by hand, to read the exact ErrorResponse fields libpq hides."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        body = struct.pack("!I", 3 << 16) + f"user\0{user}\0database\0{database}\0\0".encode()
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        kind, payload = read_message(sock)
        assert (kind, payload) == (b"R", struct.pack("!I", 3)), "expected a cleartext password request"
        secret = password.encode() + b"\0"
        sock.sendall(b"p" + struct.pack("!I", len(secret) + 4) + secret)
        kind, payload = read_message(sock)
        if (kind, payload) == (b"R", struct.pack("!I", 0)):
            # Accepted by the proxy: the backing server may still refuse (a missing database).
            kind, payload = read_message(sock)
        assert kind == b"E", f"expected an ErrorResponse, got {kind!r}"
        return {chr(f[0]): f[1:].decode() for f in payload.split(b"\0") if f}


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = recv_exact(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], recv_exact(sock, length - 4)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def emulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("lakebase-", "pgproxy-"))]


# -- REST API through the SDK ----------------------------------------------------------------


def test_identity_project_and_not_found(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """The SDK's identity, project and branch reads, and its NotFound for missing objects."""
    assert w.current_user.me().user_name == emu.user_name
    project = w.postgres.get_project(PROJECT)
    assert project.status is not None and project.status.default_branch == PRODUCTION
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
    child = create_branch(w, "feature-a")
    assert child.name == f"{PROJECT}/branches/feature-a"
    assert child.status is not None and child.status.current_state is not None
    assert child.status.current_state.value == "READY"
    assert child.status.source_branch == PRODUCTION and child.status.expire_time is not None
    with connect(emu, w, child.name) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_database()").fetchone() == (emu.database_of("shop", "feature-a"),)
        assert labels(conn) == ["seed"]  # the child sees the parent's data at fork time
        conn.execute("INSERT INTO items VALUES (2, 'child only')")
    grandchild = create_branch(w, "feature-a-b", source_branch=child.name)
    with connect(emu, w, PRODUCTION) as conn:
        assert labels(conn) == ["seed"]  # the parent never sees the child's write
    with connect(emu, w, f"{grandchild.name}") as conn:
        assert labels(conn) == ["seed", "child only"]


def test_list_branches_pages(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Listing follows the SDK's paging, in creation order."""
    for branch_id in ("b-one", "b-two", "b-three"):
        create_branch(w, branch_id)
    names = [b.name for b in w.postgres.list_branches(PROJECT, page_size=2)]
    assert names == [PRODUCTION] + [f"{PROJECT}/branches/{b}" for b in ("b-one", "b-two", "b-three")]
    assert emu.calls()["GET list_branches"] == 2
    assert [b["name"] for b in emu.branches("shop")] == names


def test_delete_branch_drops_its_database(
    w: WorkspaceClient, emu: LakebaseEmulator, embedded_server: ServerAddress
) -> None:
    """Deleting a branch removes its backing database; deleting it again is NotFound."""
    branch = create_branch(w, "short-lived")
    database = emu.database_of("shop", "short-lived")
    assert database_exists(embedded_server, database)
    op = delete_branch(w, f"{branch.name}")
    assert op.error is None and op.response == {}
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{branch.name}")
    assert not database_exists(embedded_server, database)
    with pytest.raises(NotFound):
        w.postgres.delete_branch(f"{branch.name}")


def test_refuses_to_delete_default_protected_and_parents(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """The service's own refusals, which the plugin must survive and report."""
    with pytest.raises(BadRequest, match="default branch") as excinfo:
        w.postgres.delete_branch(PRODUCTION)
    assert excinfo.value.error_code == "FAILED_PRECONDITION"
    guarded = create_branch(w, "guarded", is_protected=True)
    assert guarded.status is not None and guarded.status.is_protected is True
    with pytest.raises(BadRequest, match="protected"):
        w.postgres.delete_branch(f"{guarded.name}")
    parent = create_branch(w, "parent")
    child = create_branch(w, "kid", source_branch=parent.name)
    with pytest.raises(BadRequest, match="child branches"):
        w.postgres.delete_branch(f"{parent.name}")
    assert delete_branch(w, f"{child.name}").error is None
    assert delete_branch(w, f"{parent.name}").error is None


def test_create_branch_validation(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Invalid ids, expiry settings and parents are refused as the service refuses them."""

    def attempt(branch_id: str, spec: BranchSpec) -> None:
        w.postgres.create_branch(PROJECT, Branch(spec=spec), branch_id)

    hour = Duration(seconds=3600)
    for bad_id in ("Bad_Id", "1abc", "trailing-", "x" * 64, ""):
        with pytest.raises(InvalidParameterValue):
            attempt(bad_id, BranchSpec(ttl=hour))
    with pytest.raises(InvalidParameterValue, match="exactly one"):
        attempt("no-expiry-given", BranchSpec())
    with pytest.raises(BadRequest, match="exactly one"):
        attempt("two-given", BranchSpec(ttl=hour, no_expiry=True))
    with pytest.raises(BadRequest, match="30 days"):
        attempt("too-long", BranchSpec(ttl=Duration(seconds=31 * 86400)))
    with pytest.raises(NotFound):
        attempt("orphan", BranchSpec(ttl=hour, source_branch=f"{PROJECT}/branches/missing"))
    create_branch(w, "taken")
    with pytest.raises(AlreadyExists):
        attempt("taken", BranchSpec(ttl=hour))
    assert emu.calls()["POST create_branch"] == 11
    assert sorted(b["branch_id"] for b in emu.branches("shop")) == ["production", "taken"]


def test_branch_limit_fails_the_operation(embedded_server: ServerAddress, seed: str) -> None:
    """The branch limit fails the operation, not the request, as on Lakebase."""
    with LakebaseEmulator(embedded_server, branch_limit=2, operation_delay=0.0) as emulator:
        emulator.create_project("shop", source_database=seed)
        w = client(emulator)
        create_branch(w, "first")
        op = finish(
            w, w.postgres.create_branch(PROJECT, Branch(spec=BranchSpec(no_expiry=True)), "second").name()
        )
        assert op.error is not None and op.error.error_code is not None
        assert op.error.error_code.value == "RESOURCE_EXHAUSTED"
        assert op.error.message and "too many branches" in op.error.message
        assert [b["branch_id"] for b in emulator.branches("shop")] == ["production", "first"]


def test_ttl_really_expires(
    w: WorkspaceClient, emu: LakebaseEmulator, embedded_server: ServerAddress
) -> None:
    """A branch past its TTL is deleted with its database, without a client asking."""
    branch = create_branch(w, "ephemeral", ttl=Duration(seconds=1))
    database = emu.database_of("shop", "ephemeral")
    deadline = time.monotonic() + 5
    while True:
        try:
            w.postgres.get_branch(f"{branch.name}")
        except NotFound:
            break
        assert time.monotonic() < deadline, "the branch outlived its TTL"
        time.sleep(0.05)
    assert not database_exists(embedded_server, database)


def test_auto_endpoint_and_one_read_write_endpoint(embedded_server: ServerAddress) -> None:
    """With auto endpoints every branch has one read-write endpoint, and only one."""
    with LakebaseEmulator(embedded_server, auto_endpoint=True, operation_delay=0.0) as emulator:
        emulator.create_project("shop")
        w = client(emulator)
        child = create_branch(w, "auto")
        for branch in (PRODUCTION, f"{child.name}"):
            endpoints = list(w.postgres.list_endpoints(branch))
            assert [e.endpoint_id for e in endpoints] == ["primary"]
            assert endpoints[0].status is not None and endpoints[0].status.hosts is not None
            assert endpoints[0].status.hosts.host == "127.0.0.1"
        spec = EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)
        with pytest.raises(ResourceConflict):
            w.postgres.create_endpoint(f"{child.name}", Endpoint(spec=spec), "second")
        endpoint = w.postgres.get_endpoint(f"{child.name}/endpoints/primary")
        assert endpoint.status is not None and endpoint.status.current_state is not None
        assert endpoint.status.current_state.value == "ACTIVE"
        with connect(emulator, w, f"{child.name}") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# -- PostgreSQL logins -----------------------------------------------------------------------


def test_bad_and_expired_tokens_are_refused(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """Logins are checked as Lakebase checks them: wrong token, other user, missing database,
    expired token (at login only)."""
    conn = connect(emu, w, PRODUCTION)
    endpoint = f"{PRODUCTION}/endpoints/primary"
    token = w.postgres.generate_database_credential(endpoint=endpoint).token
    assert token
    fields = raw_login(emu.pg_port, user=emu.user_name, password="not-a-token")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert fields["M"] == f'password authentication failed for user "{emu.user_name}"'
    assert raw_login(emu.pg_port, user="mallory@example.com", password=token)["C"] == "28P01"
    assert raw_login(emu.pg_port, user=emu.user_name, password=token, database="other")["C"] == "3D000"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=emu.pg_port,
            dbname="databricks_postgres",
            user=emu.user_name,
            password="wrong",
            sslmode="require",
        )

    emu.expire_credentials()
    fields = raw_login(emu.pg_port, user=emu.user_name, password=token)
    assert fields["C"] == "28P01" and "expired" in fields["D"]
    with pytest.raises(psycopg.OperationalError, match="expired"):
        psycopg.connect(
            host="127.0.0.1",
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
    """Deleting a branch ends its sessions and invalidates its tokens."""
    branch = create_branch(w, "doomed")
    conn = connect(emu, w, f"{branch.name}")
    token = w.postgres.generate_database_credential(endpoint=f"{branch.name}/endpoints/primary").token
    assert token
    assert delete_branch(w, f"{branch.name}").error is None
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert raw_login(emu.pg_port, user=emu.user_name, password=token)["C"] == "28P01"
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
    """PostgreSQL refuses TEMPLATE while a session is open on the parent: the dump path covers it."""
    with connect(emu, w, PRODUCTION) as session:
        session.execute("INSERT INTO items VALUES (3, 'written before the fork')")
        child = create_branch(w, "while-busy")
        assert session.execute("SELECT count(*) FROM items").fetchone() == (2,)
    with connect(emu, w, f"{child.name}") as conn:
        assert labels(conn) == ["seed", "written before the fork"]


def test_password_protected_backing_server(embedded_server: ServerAddress, seed: str) -> None:
    """SCRAM towards the backing server, and pg_dump/pg_restore with its password."""
    backing = ServerAddress(
        host=embedded_server.host, port=embedded_server.port, user="secretive", password=SECRET
    )
    with LakebaseEmulator(backing, operation_delay=0.0) as emulator:
        emulator.create_project("shop")
        w = client(emulator)
        with connect(emulator, w, PRODUCTION) as session:
            session.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
            session.execute("INSERT INTO items VALUES (1, 'scram')")
            assert session.execute("SELECT current_user").fetchone() == ("secretive",)
            child = create_branch(w, "dumped")  # parent in use: dump path, with PGPASSWORD
        with connect(emulator, w, f"{child.name}") as conn:
            assert labels(conn) == ["scram"]


# -- fault injection -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_throttling_is_retried_by_the_sdk(w: WorkspaceClient, emu: LakebaseEmulator, status: int) -> None:
    """Throttling answers are shaped so that the SDK retries them."""
    emu.inject(status=status, error_code="TEMPORARILY_UNAVAILABLE", retry_after=0, method="GET")
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION
    assert emu.calls()["GET get_branch"] == 2


def test_persistent_errors_surface(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A server error that persists reaches the client, and clearing faults ends it."""
    emu.inject(times=2, status=500, message="backend exploded", path_contains="/branches/production")
    with pytest.raises(InternalError, match="backend exploded"):
        w.postgres.get_branch(PRODUCTION)
    emu.clear_faults()
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION


def test_dropped_connection_is_retried(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A connection dropped without an answer is retried by the SDK."""
    emu.inject(drop_connection=True, method="GET", path_contains="/projects/shop")
    assert w.postgres.get_project(PROJECT).name == PROJECT
    assert emu.calls()["GET get_project"] == 2


def test_slow_answer(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A slow answer is slow, and is not retried."""
    emu.inject(delay=0.4, method="GET")
    started = time.monotonic()
    assert w.postgres.get_branch(PRODUCTION).name == PRODUCTION
    assert time.monotonic() - started >= 0.4
    assert emu.calls()["GET get_branch"] == 1


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
    assert create_branch(w, "unlucky").name == f"{PROJECT}/branches/unlucky"


def test_revoked_and_wrong_pat(w: WorkspaceClient, emu: LakebaseEmulator) -> None:
    """A wrong or revoked personal access token is refused with the service's message."""
    with pytest.raises(Unauthenticated):
        client(emu, token="dapi-wrong").postgres.get_project(PROJECT)
    emu.revoke_pat("Token expired")
    with pytest.raises(Unauthenticated, match="Token expired"):
        w.postgres.get_project(PROJECT)


# -- lifecycle and command line --------------------------------------------------------------


def test_stop_drops_only_its_own_databases(embedded_server: ServerAddress, seed: str) -> None:
    """stop() drops the databases of this emulator instance only, and ends its threads."""
    decoy = f"emu_decoy_{uuid.uuid4().hex[:8]}"
    foreign_tag = json.dumps({"tool": TOOL, "instance": "someone-else"}, separators=(",", ":"))
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(decoy)))
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(decoy), sql.Literal(foreign_tag))
        )
    try:
        emulator = LakebaseEmulator(embedded_server, operation_delay=0.0).start()
        emulator.create_project("shop", source_database=seed)
        emulator.create_project("blank")
        w = client(emulator)
        create_branch(w, "left-behind")
        conn = connect(emulator, w, f"{PROJECT}/branches/left-behind")
        made = [
            emulator.database_of("shop", "production"),
            emulator.database_of("shop", "left-behind"),
            emulator.database_of("blank", "production"),
        ]
        emulator.stop()
        conn.close()
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
            rows = admin.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            ).fetchall()
        names = {name for name, _comment in rows}
        assert not names & set(made)
        assert not [name for name, comment in rows if comment and emulator.instance in comment]
        assert {seed, decoy} <= names
        assert emulator_threads() == []
    finally:
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(decoy)))


def test_http_shapes_without_the_sdk(emu: LakebaseEmulator) -> None:
    """What the SDK relies on but does not show: open host metadata, JSON errors everywhere."""
    import urllib.error
    import urllib.request

    def fetch(path: str, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(emu.url + path)
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
    status, body = fetch("/api/2.0/no/such/route", emu.token)
    assert status == 404 and body["error_code"] == "NOT_FOUND"
    status, body = fetch("/api/2.0/postgres/projects/shop/branches?page_token=garbage", emu.token)
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    status, body = fetch("/api/2.0/postgres/projects/shop/branches?page_size=1", emu.token)
    assert status == 200 and len(body["branches"]) == 1 and "next_page_token" not in body


def test_command_line(embedded_server: ServerAddress, seed: str) -> None:
    """The command line prints the variables a suite needs and cleans up on SIGTERM."""
    argv = [sys.executable, "-m", "pytest_dbbranch.emulator", "--backing-url", embedded_server.url()]
    argv += ["--project", "shop", "--project", "other", "--source-database", seed, "--token", "dapi-cli"]
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
        config = Config(host=env["DATABRICKS_HOST"], token=env["DATABRICKS_TOKEN"], retry_timeout_seconds=5)
        w = WorkspaceClient(config=config)
        assert w.postgres.get_project("projects/other").name == "projects/other"
        with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
            tagged = admin.execute(
                "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE %s",
                (f'%"tool":"{TOOL}"%',),
            ).fetchone()
        assert tagged is not None and tagged[0] >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    with psycopg.connect(embedded_server.conninfo(), autocommit=True) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE %s",
            (f'%"tool":"{TOOL}"%',),
        ).fetchone()
    assert left == (0,)
