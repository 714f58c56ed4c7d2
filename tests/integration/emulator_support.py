"""Helpers the emulator's tests share: an SDK client, quick operation polling, logins by hand."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import Any

import psycopg
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.service.postgres import Branch, BranchSpec, Endpoint, Operation
from google.protobuf.duration_pb2 import Duration

from pytest_dbbranch.emulator import LakebaseEmulator


def client(emulator: LakebaseEmulator, token: str | None = None) -> WorkspaceClient:
    config = Config(
        host=emulator.url, token=token or emulator.token, retry_timeout_seconds=5, http_timeout_seconds=10
    )
    return WorkspaceClient(config=config)


def finish(w: WorkspaceClient, name: str, timeout: float = 20.0) -> Operation:
    """Poll an operation quickly (the SDK's wait() sleeps more than a second between polls)."""
    deadline = time.monotonic() + timeout
    while True:
        op = w.postgres.get_operation(name)
        if op.done:
            return op
        assert time.monotonic() < deadline, f"operation {name} not done after {timeout}s"
        time.sleep(0.02)


def create_branch(w: WorkspaceClient, project: str, branch_id: str, **spec: Any) -> Branch:
    if not {"ttl", "expire_time", "no_expiry"} & set(spec):
        spec["no_expiry"] = True
    op = finish(w, w.postgres.create_branch(project, Branch(spec=BranchSpec(**spec)), branch_id).name())
    assert op.error is None, op.error
    assert op.response is not None
    return Branch.from_dict(op.response)


def hour() -> Duration:
    return Duration(seconds=3600)


def endpoint_with_host(w: WorkspaceClient, branch: str | None, timeout: float = 10.0) -> Endpoint:
    """The branch's primary endpoint once its compute has a host (it may start a moment late)."""
    assert branch is not None
    deadline = time.monotonic() + timeout
    while True:
        endpoint = w.postgres.get_endpoint(f"{branch}/endpoints/primary")
        if endpoint.status is not None and endpoint.status.hosts is not None and endpoint.status.hosts.host:
            return endpoint
        assert time.monotonic() < deadline, f"{branch}: no host after {timeout}s"
        time.sleep(0.05)


def connect(
    emulator: LakebaseEmulator, w: WorkspaceClient, branch: str | None, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Log in as on real Lakebase: endpoint host, port 5432, token as password, TLS."""
    endpoint = endpoint_with_host(w, branch)
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


def raw_login(
    host: str,
    port: int,
    *,
    user: str,
    password: str,
    database: str = "databricks_postgres",
    tls: bool = True,
) -> dict[str, str]:
    """A login by hand, to read the exact ErrorResponse fields libpq hides."""
    with socket.create_connection((host, port), timeout=5) as plain:
        sock: socket.socket = plain
        if tls:
            plain.sendall(struct.pack("!II", 8, 80877103))
            assert plain.recv(1) == b"S"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(plain)
        body = struct.pack("!I", 3 << 16) + f"user\0{user}\0database\0{database}\0\0".encode()
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        kind, payload = read_message(sock)
        if kind == b"E":
            return error_fields(payload)
        assert (kind, payload) == (b"R", struct.pack("!I", 3)), "expected a cleartext password request"
        secret = password.encode() + b"\0"
        sock.sendall(b"p" + struct.pack("!I", len(secret) + 4) + secret)
        while True:
            kind, payload = read_message(sock)
            if kind == b"E":
                return error_fields(payload)
            assert kind != b"Z", "the login succeeded"


def error_fields(payload: bytes) -> dict[str, str]:
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
