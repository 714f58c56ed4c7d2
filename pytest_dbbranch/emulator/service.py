"""An offline stand-in for Databricks Lakebase Autoscaling, backed by a real PostgreSQL server.

Why it exists: Lakebase-configured suites should run on a laptop or in CI without a workspace,
and the plugin's Lakebase backend must be tested with the real ``databricks-sdk`` client rather
than mocks that agree with whatever the code assumes. So this speaks the REST subset that
``w.postgres`` and ``w.current_user.me()`` use, with the same JSON shapes, long-running
operations, error codes and limits, and a branch is a real database cloned from its parent's
database: data forks for real, TTLs really expire, tokens really go stale at login.

Every backing database it makes carries a JSON comment naming this tool and this emulator
instance; ``stop()`` drops exactly those, and nothing else is ever dropped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql

from ..conninfo import ServerAddress, redact_text
from ..errors import DbBranchError
from .proxy import PgProxy, ProxyRefusal, make_tls_context

if TYPE_CHECKING:
    from ..server.embedded import EmbeddedServer

logger = logging.getLogger(__name__)

TOOL = "pytest-dbbranch-emulator"
DEFAULT_BRANCH = "production"
POSTGRES_DATABASE = "databricks_postgres"
DATABASE_ID = "databricks-postgres"
READ_WRITE = "ENDPOINT_TYPE_READ_WRITE"
READ_ONLY = "ENDPOINT_TYPE_READ_ONLY"
RESOURCE_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_TTL = timedelta(days=30)
CREDENTIAL_TTL_RANGE = (timedelta(seconds=300), timedelta(seconds=3600))
REAPER_INTERVAL = 0.2
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")
_BRANCH_NAME = re.compile(r"^projects/([^/]+)/branches/([^/]+)$")
_ENDPOINT_NAME = re.compile(r"^projects/([^/]+)/branches/([^/]+)/endpoints/([^/]+)$")
_OPERATION_KINDS = frozenset({"create_branch", "delete_branch", "create_endpoint", "delete_endpoint"})


# -- wire encodings --------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a 'Z', as protobuf's JSON mapping (and so the SDK) expects."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object, what: str) -> datetime:
    match = _TIMESTAMP.match(text) if isinstance(text, str) else None
    if match is None:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{what} must be an RFC 3339 timestamp, got {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")


def parse_duration(text: object, what: str) -> timedelta:
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"{what} must be a duration like '3600s', got {text!r}"
        )
    return timedelta(seconds=float(match.group(1)))


class ApiError(Exception):
    """Carries the status and ``error_code`` the SDK needs to pick its exception class."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


class _OperationFailure(Exception):
    """Some failures (limits, failed clones) only reach a client through the polled operation."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


# -- state -----------------------------------------------------------------------------------


@dataclass
class _Fault:
    remaining: int
    status: int | None
    error_code: str
    message: str
    retry_after: float | None
    delay: float
    drop_connection: bool
    operation_error: bool
    method: str | None
    path_contains: str

    def matches(self, method: str, target: str, kind: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains not in target:
            return False
        # An operation fault is meant for the request that starts an operation, not for a poll.
        return not (self.operation_error and self.status is None and kind not in _OPERATION_KINDS)


@dataclass
class _Operation:
    name: str
    kind: str
    done: bool = False
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "done": self.done, "metadata": {"kind": self.kind}}
        if self.done and self.error is not None:
            out["error"] = dict(self.error)
        elif self.done:
            out["response"] = dict(self.response or {})
        return out


@dataclass
class _Endpoint:
    endpoint_id: str
    uid: str
    created: datetime
    updated: datetime
    spec: dict[str, Any]
    state: str = "INIT"


@dataclass
class _Branch:
    project_id: str
    branch_id: str
    uid: str
    created: datetime
    updated: datetime
    spec: dict[str, Any]
    default: bool
    protected: bool
    expire_at: datetime | None
    source_branch: str | None
    database: str | None = None
    state: str = "INIT"
    size: int = 0
    deleting: _Operation | None = None
    endpoints: dict[str, _Endpoint] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}/branches/{self.branch_id}"

    @property
    def usable(self) -> bool:
        return self.state == "READY" and self.deleting is None


@dataclass
class _Project:
    project_id: str
    uid: str
    created: datetime
    default_branch: str = DEFAULT_BRANCH
    branches: dict[str, _Branch] = field(default_factory=dict)
    operations: dict[str, _Operation] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}"


@dataclass
class _Credential:
    project_id: str
    branch_id: str
    endpoint_id: str
    expires: datetime


@dataclass
class _Request:
    params: tuple[str, ...]
    query: dict[str, str]
    body: dict[str, Any]
    fault: _Fault | None


@dataclass
class _Reply:
    status: int
    payload: dict[str, Any] | None  # None: close the socket without answering
    headers: dict[str, str] = field(default_factory=dict)


_Handler = Callable[["LakebaseEmulator", _Request], dict[str, Any]]


# -- the emulator ----------------------------------------------------------------------------


class LakebaseEmulator:
    """REST API and wire proxy in one object, because tokens the API issues are what the proxy accepts."""

    def __init__(
        self,
        backing: ServerAddress,
        *,
        token: str = "dapi-emulator",
        user_name: str = "alice@example.com",
        branch_limit: int = 10,
        operation_delay: float = 0.05,
        credential_lifetime: float = 3600.0,
        auto_endpoint: bool = False,
        page_size: int = 50,
        http_port: int = 0,
        pg_port: int = 0,
    ) -> None:
        self.backing = backing
        self.token = token
        self.user_name = user_name
        self.branch_limit = branch_limit
        self.operation_delay = operation_delay
        self.credential_lifetime = credential_lifetime
        self.auto_endpoint = auto_endpoint
        self.page_size = page_size
        self._http_port = http_port
        self._pg_port = pg_port
        self.instance = uuid.uuid4().hex[:12]
        #: Backing databases this instance made. Clients may overwrite a database comment
        #: (the plugin tags its branches that way), so the registry counts as proof too.
        self._created: set[str] = set()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._projects: dict[str, _Project] = {}
        self._credentials: dict[str, _Credential] = {}
        self._faults: list[_Fault] = []
        self._calls: Counter[str] = Counter()
        self._user_agents: set[str] = set()
        self._revoked: str | None = None
        self._workers: set[threading.Thread] = set()
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._proxy: PgProxy | None = None
        self._pg_version = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LakebaseEmulator:
        try:
            with self._admin() as conn:
                self._pg_version = conn.info.server_version // 10000
            self._proxy = PgProxy(self.backing, self._authorize, port=self._pg_port, tls=make_tls_context())
            self._proxy.start()
            self._http = _HttpServer(("127.0.0.1", self._http_port), _RequestHandler, self)
            self._http_thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="lakebase-http",
                daemon=True,
            )
            self._http_thread.start()
            self._reaper = threading.Thread(target=self._reap_loop, name="lakebase-reaper", daemon=True)
            self._reaper.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Leaves nothing behind, so tests can start and stop emulators on a shared backing server."""
        self._stopping.set()
        if self._http is not None:
            if self._http_thread is not None:
                self._http.shutdown()
                self._http_thread.join()
            self._http.server_close()
        if self._reaper is not None:
            self._reaper.join()
        while True:
            with self._lock:
                workers = list(self._workers)
            if not workers:
                break
            for worker in workers:
                worker.join()
        if self._proxy is not None:
            self._proxy.stop()
        with contextlib.suppress(psycopg.Error):
            self._drop_all_ours()

    def __enter__(self) -> LakebaseEmulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._http is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def pg_port(self) -> int:
        if self._proxy is None:
            raise RuntimeError("the emulator is not started")
        return self._proxy.port

    @property
    def sslmode(self) -> str:
        """What a client should ask for: 'require' unless the proxy could not get a certificate."""
        return "require" if self._proxy is not None and self._proxy.tls_enabled else "prefer"

    # -- test controls ---------------------------------------------------------------------

    def create_project(
        self, project_id: str, *, source_database: str | None = None, protected: bool = False
    ) -> None:
        if not RESOURCE_ID.match(project_id):
            raise ValueError(f"project id {project_id!r} is not a valid Lakebase resource id")
        with self._lock:
            if project_id in self._projects:
                raise ValueError(f"project {project_id!r} already exists")
        now = _now()
        project = _Project(project_id, "prj-" + secrets.token_hex(8), now)
        spec: dict[str, Any] = {"no_expiry": True}
        if protected:
            spec["is_protected"] = True
        branch = _Branch(
            project_id=project_id,
            branch_id=DEFAULT_BRANCH,
            uid="br-" + secrets.token_hex(8),
            created=now,
            updated=now,
            spec=spec,
            default=True,
            protected=protected,
            expire_at=None,
            source_branch=None,
        )
        database = self._database_name(project_id, DEFAULT_BRANCH)
        tag = self._tag(project_id, DEFAULT_BRANCH)
        if source_database is None:
            with self._admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                self._created.add(database)
                self._comment(conn, database, tag)
        else:
            self._clone(source_database, database, tag)
        branch.database, branch.state, branch.size = database, "READY", self._size(database)
        if self.auto_endpoint:
            branch.endpoints["primary"] = self._primary_endpoint(now)
        project.branches[DEFAULT_BRANCH] = branch
        with self._lock:
            self._projects[project_id] = project

    def inject(
        self,
        *,
        times: int = 1,
        status: int | None = None,
        error_code: str = "INTERNAL_ERROR",
        message: str = "injected fault",
        retry_after: float | None = None,
        delay: float = 0.0,
        drop_connection: bool = False,
        operation_error: bool = False,
        method: str | None = None,
        path_contains: str = "",
    ) -> None:
        """Throttling, hang-ups and failed operations are what clients must survive, and the real
        service cannot be made to produce them on demand."""
        fault = _Fault(
            remaining=times,
            status=status,
            error_code=error_code,
            message=message,
            retry_after=retry_after,
            delay=delay,
            drop_connection=drop_connection,
            operation_error=operation_error,
            method=method,
            path_contains=path_contains,
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_credentials(self) -> None:
        past = _now() - timedelta(seconds=1)
        with self._lock:
            for credential in self._credentials.values():
                credential.expires = min(credential.expires, past)

    def revoke_pat(self, message: str = "Token expired") -> None:
        with self._lock:
            self._revoked = message

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def user_agents(self) -> set[str]:
        """User-Agent headers seen, so a client can prove it names itself."""
        with self._lock:
            return set(self._user_agents)

    def branches(self, project_id: str) -> list[dict[str, Any]]:
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                raise KeyError(f"no project {project_id!r}")
            return [self._branch_json(branch) for branch in project.branches.values()]

    def database_of(self, project_id: str, branch_id: str) -> str:
        with self._lock:
            project = self._projects.get(project_id)
            branch = project.branches.get(branch_id) if project is not None else None
            if branch is None or branch.database is None:
                raise KeyError(f"projects/{project_id}/branches/{branch_id} has no database")
            return branch.database

    # -- backing server --------------------------------------------------------------------

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        conn = psycopg.connect(self.backing.conninfo(), autocommit=True, connect_timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def _tag(self, project_id: str, branch_id: str) -> str:
        data = {"tool": TOOL, "instance": self.instance, "project": project_id, "branch": branch_id}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def _is_ours(self, comment: str | None) -> bool:
        try:
            data: Any = json.loads(comment or "")
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("tool") == TOOL and data.get("instance") == self.instance

    def _database_name(self, project_id: str, branch_id: str) -> str:
        return f"lb_{project_id[:18]}_{branch_id[:28]}_{secrets.token_hex(5)}"

    @staticmethod
    def _comment(conn: psycopg.Connection[tuple[Any, ...]], database: str, tag: str) -> None:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(database), sql.Literal(tag))
        )

    def _clone(self, parent: str, database: str, tag: str) -> None:
        """Copy with TEMPLATE when nobody is connected to the parent, else dump and restore.

        TEMPLATE is the fast path but PostgreSQL refuses it while any session uses the parent;
        a Lakebase parent in use can still be branched, so the dump path keeps that promise.
        """
        with self._admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (parent,)
            ).fetchone()
            if row is not None and row[0] == 0:
                try:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(database), sql.Identifier(parent)
                        )
                    )
                except psycopg.errors.ObjectInUse:
                    pass  # someone connected after the check: take the dump path
                else:
                    self._tag_or_drop(conn, database, tag)
                    return
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database)))
            self._tag_or_drop(conn, database, tag)
        try:
            self._dump_restore(parent, database)
        except BaseException:
            with self._admin() as conn:
                self._drop(conn, database)
            raise

    def _tag_or_drop(self, conn: psycopg.Connection[tuple[Any, ...]], database: str, tag: str) -> None:
        self._created.add(database)
        try:
            self._comment(conn, database, tag)
        except BaseException:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            raise

    def _dump_restore(self, parent: str, database: str) -> None:
        from ..server.binaries import client

        env = dict(os.environ)
        if self.backing.password:
            env["PGPASSWORD"] = self.backing.password
        source = dict(self.backing.kwargs(parent))
        target = dict(self.backing.kwargs(database))
        for params in (source, target):
            params.pop("password", None)
        dump_argv = [client("pg_dump"), "-Fc", "--dbname", psycopg.conninfo.make_conninfo(**source)]
        restore_argv = [
            client("pg_restore"),
            "--exit-on-error",
            "--dbname",
            psycopg.conninfo.make_conninfo(**target),
        ]
        with tempfile.TemporaryFile() as dump_errors:
            dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=dump_errors, env=env)
            assert dump.stdout is not None
            restore = subprocess.run(
                restore_argv, stdin=dump.stdout, capture_output=True, env=env, check=False
            )
            dump.stdout.close()
            dump_code = dump.wait()
            dump_errors.seek(0)
            dump_text = dump_errors.read().decode("utf-8", "replace")
        if dump_code != 0 or restore.returncode != 0:
            detail = (dump_text + restore.stderr.decode("utf-8", "replace")).strip()[-1500:]
            raise RuntimeError(f"copying {parent} into {database} with pg_dump/pg_restore failed: {detail}")

    def _size(self, database: str) -> int:
        with self._admin() as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
        return int(row[0]) if row else 0

    def _drop(self, conn: psycopg.Connection[tuple[Any, ...]], database: str) -> None:
        """The tag, not the name, proves ownership: a user's database may well match our naming."""
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if row is None:
            self._created.discard(database)
            return
        if database not in self._created and not self._is_ours(row[0]):
            logger.warning("not dropping %s: this emulator did not create it", database)
            return
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        self._created.discard(database)

    def _drop_all_ours(self) -> None:
        with self._admin() as conn:
            rows = conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            ).fetchall()
            for name, comment in rows:
                if name in self._created or self._is_ours(comment):
                    with contextlib.suppress(psycopg.Error):
                        self._drop(conn, name)

    # -- background work -------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except Exception:
                logger.exception("emulator worker %s failed", name)
            finally:
                with self._lock:
                    self._workers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._workers.add(thread)
        thread.start()

    def _new_operation(self, project: _Project, kind: str) -> _Operation:
        op = _Operation(f"{project.name}/operations/op-{secrets.token_hex(8)}", kind)
        project.operations[op.name.rsplit("/", 1)[1]] = op
        return op

    def _run_operation(
        self,
        op: _Operation,
        work: Callable[[], Callable[[], dict[str, Any]]],
        rollback: Callable[[], None],
        fault: _Fault | None,
    ) -> None:
        """Slow part outside the lock; the visible change and ``done`` land together, after the delay."""

        def body() -> None:
            started = time.monotonic()
            commit: Callable[[], dict[str, Any]] | None = None
            error: dict[str, str] | None = None
            try:
                if fault is not None:
                    raise _OperationFailure(fault.error_code, fault.message)
                commit = work()
            except _OperationFailure as failure:
                error = {"error_code": failure.error_code, "message": failure.message}
            except Exception as exc:
                error = {"error_code": "INTERNAL_ERROR", "message": self.backing.redact(str(exc))}
            self._stopping.wait(max(0.0, started + self.operation_delay - time.monotonic()))
            with self._lock:
                if commit is not None:
                    op.response = commit()
                else:
                    rollback()
                    op.error = error
                op.done = True

        self._spawn("lakebase-" + op.kind, body)

    def _reap_loop(self) -> None:
        while not self._stopping.wait(REAPER_INTERVAL):
            now = _now()
            with self._lock:
                for project in self._projects.values():
                    for branch in list(project.branches.values()):
                        expired = branch.expire_at is not None and branch.expire_at <= now
                        if expired and branch.usable and not self._refuse_delete_reason(project, branch):
                            self._begin_delete(project, branch, None)

    # -- authorization of PostgreSQL logins ------------------------------------------------

    def _authorize(self, user: str, database: str, password: str) -> str:
        failed = f'password authentication failed for user "{user}"'
        with self._lock:
            credential = self._credentials.get(password)
            if credential is None:
                raise ProxyRefusal("28P01", failed)
            if credential.expires <= _now():
                raise ProxyRefusal(
                    "28P01",
                    failed,
                    f"The database credential (OAuth token) expired at {format_time(credential.expires)}; "
                    "generate a new one with generate_database_credential.",
                )
            if user != self.user_name:
                raise ProxyRefusal("28P01", failed, f"The token was issued to {self.user_name}.")
            project = self._projects.get(credential.project_id)
            branch = project.branches.get(credential.branch_id) if project else None
            endpoint = branch.endpoints.get(credential.endpoint_id) if branch else None
            if branch is None or endpoint is None or branch.deleting is not None:
                raise ProxyRefusal("28P01", failed, "The token's endpoint no longer exists.")
            if branch.state != "READY" or branch.database is None:
                raise ProxyRefusal("57P03", f"branch {branch.name} is not ready yet")
            if database == POSTGRES_DATABASE:
                return branch.database
            # Databases made with CREATE DATABASE inside a branch (the plugin's clone isolation)
            # live on the backing server under their own names. Simplification: they are not
            # scoped to the branch, but another branch's storage is never reachable this way.
            backing_names = {
                b.database for p in self._projects.values() for b in p.branches.values() if b.database
            }
            if database in backing_names:
                raise ProxyRefusal("3D000", f'database "{database}" does not exist')
            return database

    # -- HTTP dispatch ---------------------------------------------------------------------

    def _take_fault(self, method: str, target: str, kind: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(method, target, kind):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _dispatch(self, method: str, target: str, headers: Any, raw_body: bytes) -> _Reply:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        route = _route(method, path)
        kind = route[0] if route else "unknown"
        with self._lock:
            self._calls[f"{method} {kind}"] += 1
            self._user_agents.add(str(headers.get("User-Agent", "")))
        if kind == "host_metadata":
            return _Reply(200, {})
        fault = self._take_fault(method, target, kind)
        if fault is not None:
            if fault.delay > 0:
                self._stopping.wait(fault.delay)
            if fault.drop_connection:
                return _Reply(0, None)
            if fault.status is not None:
                extra = {} if fault.retry_after is None else {"Retry-After": _retry_after(fault.retry_after)}
                return _Reply(fault.status, {"error_code": fault.error_code, "message": fault.message}, extra)
            if not fault.operation_error:
                fault = None
        try:
            self._check_auth(headers)
            if route is None:
                raise ApiError(404, "NOT_FOUND", f"no API at {method} {path}")
            _kind, handler, params = route
            query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
            return _Reply(200, handler(self, _Request(params, query, _json_body(raw_body), fault)))
        except ApiError as error:
            return _Reply(error.status, {"error_code": error.error_code, "message": error.message})
        except Exception as exc:
            logger.exception("emulator failed on %s %s", method, path)
            message = self.backing.redact(f"{type(exc).__name__}: {exc}")
            return _Reply(500, {"error_code": "INTERNAL_ERROR", "message": message})

    def _check_auth(self, headers: Any) -> None:
        header = str(headers.get("Authorization") or "")
        if not header.startswith("Bearer "):
            raise ApiError(
                401, "UNAUTHENTICATED", "Missing credentials: send 'Authorization: Bearer <token>'"
            )
        if not secrets.compare_digest(header[7:].strip().encode(), self.token.encode()):
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
        with self._lock:
            if self._revoked is not None:
                raise ApiError(401, "UNAUTHENTICATED", self._revoked)

    # -- lookups (call with the lock held) -------------------------------------------------

    def _project(self, project_id: str) -> _Project:
        project = self._projects.get(project_id)
        if project is None:
            raise ApiError(404, "NOT_FOUND", f"Project projects/{project_id} not found")
        return project

    def _branch(self, project_id: str, branch_id: str) -> tuple[_Project, _Branch]:
        project = self._project(project_id)
        branch = project.branches.get(branch_id)
        if branch is None:
            raise ApiError(404, "NOT_FOUND", f"Branch projects/{project_id}/branches/{branch_id} not found")
        return project, branch

    def _endpoint(self, project_id: str, branch_id: str, endpoint_id: str) -> tuple[_Branch, _Endpoint]:
        _project, branch = self._branch(project_id, branch_id)
        endpoint = branch.endpoints.get(endpoint_id)
        if endpoint is None:
            raise ApiError(404, "NOT_FOUND", f"Endpoint {branch.name}/endpoints/{endpoint_id} not found")
        return branch, endpoint

    def _children(self, project: _Project, branch: _Branch) -> list[_Branch]:
        return [child for child in project.branches.values() if child.source_branch == branch.name]

    def _refuse_delete_reason(self, project: _Project, branch: _Branch) -> str | None:
        if branch.default:
            return f"{branch.name} is the project's default branch and cannot be deleted"
        if branch.protected:
            return f"{branch.name} is protected and cannot be deleted"
        if branch.state != "READY":
            return f"{branch.name} is still being created"
        children = self._children(project, branch)
        if children:
            names = ", ".join(child.branch_id for child in children)
            return f"{branch.name} has child branches ({names}); delete them first"
        return None

    # -- JSON views ------------------------------------------------------------------------

    def _project_json(self, project: _Project) -> dict[str, Any]:
        return {
            "name": project.name,
            "project_id": project.project_id,
            "uid": project.uid,
            "create_time": format_time(project.created),
            "update_time": format_time(project.created),
            "spec": {"display_name": project.project_id, "pg_version": self._pg_version},
            "status": {
                "default_branch": f"{project.name}/branches/{project.default_branch}",
                "display_name": project.project_id,
                "owner": self.user_name,
                "pg_version": self._pg_version,
            },
        }

    def _branch_json(self, branch: _Branch) -> dict[str, Any]:
        status: dict[str, Any] = {
            "branch_id": branch.branch_id,
            "current_state": branch.state,
            "state_change_time": format_time(branch.updated),
            "default": branch.default,
            "is_protected": branch.protected,
            "logical_size_bytes": str(branch.size),
        }
        if branch.deleting is not None:
            status["pending_state"] = "DELETED"
        if branch.expire_at is not None:
            status["expire_time"] = format_time(branch.expire_at)
        if branch.source_branch is not None:
            status["source_branch"] = branch.source_branch
            for key in ("source_branch_lsn", "source_branch_time"):
                if key in branch.spec:
                    status[key] = branch.spec[key]
        return {
            "name": branch.name,
            "parent": f"projects/{branch.project_id}",
            "branch_id": branch.branch_id,
            "uid": branch.uid,
            "create_time": format_time(branch.created),
            "update_time": format_time(branch.updated),
            "spec": json.loads(json.dumps(branch.spec)),
            "status": status,
        }

    def _endpoint_json(self, branch: _Branch, endpoint: _Endpoint) -> dict[str, Any]:
        spec = json.loads(json.dumps(endpoint.spec))
        status: dict[str, Any] = {
            "endpoint_id": endpoint.endpoint_id,
            "endpoint_type": spec.get("endpoint_type"),
            "current_state": endpoint.state,
            "hosts": {"host": "127.0.0.1"},
        }
        for key in (
            "autoscaling_limit_min_cu",
            "autoscaling_limit_max_cu",
            "suspend_timeout_duration",
            "disabled",
        ):
            if key in spec:
                status[key] = spec[key]
        return {
            "name": f"{branch.name}/endpoints/{endpoint.endpoint_id}",
            "parent": branch.name,
            "endpoint_id": endpoint.endpoint_id,
            "uid": endpoint.uid,
            "create_time": format_time(endpoint.created),
            "update_time": format_time(endpoint.updated),
            "spec": spec,
            "status": status,
        }

    def _database_json(self, branch: _Branch) -> dict[str, Any]:
        return {
            "name": f"{branch.name}/databases/{DATABASE_ID}",
            "parent": branch.name,
            "database_id": DATABASE_ID,
            "create_time": format_time(branch.created),
            "update_time": format_time(branch.created),
            "status": {
                "database_id": DATABASE_ID,
                "postgres_database": POSTGRES_DATABASE,
                "role": self.user_name,
            },
        }

    def _primary_endpoint(self, now: datetime) -> _Endpoint:
        spec = {
            "endpoint_type": READ_WRITE,
            "autoscaling_limit_min_cu": 0.5,
            "autoscaling_limit_max_cu": 1.0,
            "suspend_timeout_duration": "300s",
        }
        return _Endpoint("primary", "ep-" + secrets.token_hex(8), now, now, spec, "ACTIVE")

    # -- route handlers --------------------------------------------------------------------

    def _host_metadata(self, request: _Request) -> dict[str, Any]:
        return {}

    def _me(self, request: _Request) -> dict[str, Any]:
        return {
            "id": "1",
            "userName": self.user_name,
            "displayName": self.user_name.split("@", 1)[0],
            "active": True,
            "emails": [{"value": self.user_name, "primary": True, "type": "work"}],
        }

    def _list_projects(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            return {"projects": [self._project_json(p) for p in self._projects.values()]}

    def _get_project(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            return self._project_json(self._project(request.params[0]))

    def _list_branches(self, request: _Request) -> dict[str, Any]:
        size_text = request.query.get("page_size", "")
        try:
            size = int(size_text) if size_text else self.page_size
        except ValueError:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"page_size must be an integer: {size_text!r}"
            ) from None
        if size < 0:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "page_size cannot be negative")
        size = size or self.page_size
        offset = _decode_page_token(request.query.get("page_token", ""))
        with self._lock:
            branches = list(self._project(request.params[0]).branches.values())
            page = [self._branch_json(branch) for branch in branches[offset : offset + size]]
        out: dict[str, Any] = {"branches": page}
        if offset + size < len(branches):
            out["next_page_token"] = _encode_page_token(offset + size)
        return out

    def _get_branch(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            _project, branch = self._branch(*request.params)
            return self._branch_json(branch)

    def _create_branch(self, request: _Request) -> dict[str, Any]:
        project_id = request.params[0]
        branch_id = request.query.get("branch_id", "")
        if not RESOURCE_ID.match(branch_id):
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"branch_id {branch_id!r} must be 1-63 characters, start with a lowercase letter, "
                "and contain only lowercase letters, digits and hyphens (not at the end)",
            )
        spec = request.body.get("spec") or {}
        if not isinstance(spec, dict):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "spec must be an object")
        if spec.get("source_snapshot"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "source_snapshot is not supported by the emulator")
        given = [key for key in ("ttl", "expire_time") if spec.get(key) is not None]
        given += ["no_expiry"] if spec.get("no_expiry") is True else []
        if len(given) != 1:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "exactly one of spec.ttl, spec.expire_time or spec.no_expiry must be given"
                + (f" (got {', '.join(given)})" if given else ""),
            )
        now = _now()
        expire_at: datetime | None = None
        if "ttl" in given:
            ttl = parse_duration(spec["ttl"], "spec.ttl")
            if not timedelta(0) < ttl <= MAX_TTL:
                raise ApiError(
                    400, "INVALID_PARAMETER_VALUE", "spec.ttl must be more than 0s and at most 30 days"
                )
            expire_at = now + ttl
        elif "expire_time" in given:
            expire_at = parse_time(spec["expire_time"], "spec.expire_time")
            if expire_at <= now:
                raise ApiError(400, "INVALID_PARAMETER_VALUE", "spec.expire_time must be in the future")
        if "source_branch_time" in spec:
            parse_time(spec["source_branch_time"], "spec.source_branch_time")
        with self._lock:
            project = self._project(project_id)
            source_name = spec.get("source_branch") or f"{project.name}/branches/{project.default_branch}"
            match = _BRANCH_NAME.match(str(source_name))
            if match is None or match.group(1) != project_id:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"source_branch {source_name!r} is not a branch of {project.name}",
                )
            _project, parent = self._branch(project_id, match.group(2))
            if not parent.usable:
                raise ApiError(400, "FAILED_PRECONDITION", f"source branch {parent.name} is not ready")
            if branch_id in project.branches:
                raise ApiError(
                    409, "ALREADY_EXISTS", f"Branch {project.name}/branches/{branch_id} already exists"
                )
            op = self._new_operation(project, "create_branch")
            if len(project.branches) >= self.branch_limit:
                message = (
                    f"too many branches in project {project.name}: the limit is {self.branch_limit} "
                    "(production counts); delete branches first"
                )
                self._run_operation(op, _fail("RESOURCE_EXHAUSTED", message), lambda: None, None)
                return op.as_json()
            branch = _Branch(
                project_id=project_id,
                branch_id=branch_id,
                uid="br-" + secrets.token_hex(8),
                created=now,
                updated=now,
                spec=dict(spec),
                default=False,
                protected=bool(spec.get("is_protected")),
                expire_at=expire_at,
                source_branch=parent.name,
            )
            project.branches[branch_id] = branch
            parent_database = parent.database
            assert parent_database is not None

        def work() -> Callable[[], dict[str, Any]]:
            database = self._database_name(project_id, branch_id)
            self._clone(parent_database, database, self._tag(project_id, branch_id))
            size = self._size(database)

            def commit() -> dict[str, Any]:
                branch.database, branch.size, branch.state = database, size, "READY"
                branch.updated = _now()
                if self.auto_endpoint:
                    branch.endpoints["primary"] = self._primary_endpoint(branch.updated)
                return self._branch_json(branch)

            return commit

        def rollback() -> None:
            project.branches.pop(branch_id, None)

        self._run_operation(op, work, rollback, request.fault)
        return op.as_json()

    def _delete_branch(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            project, branch = self._branch(*request.params)
            if branch.deleting is not None:
                return branch.deleting.as_json()
            reason = self._refuse_delete_reason(project, branch)
            if reason is not None:
                raise ApiError(400, "FAILED_PRECONDITION", reason)
            return self._begin_delete(project, branch, request.fault).as_json()

    def _begin_delete(self, project: _Project, branch: _Branch, fault: _Fault | None) -> _Operation:
        op = self._new_operation(project, "delete_branch")
        branch.deleting = op
        database = branch.database

        def work() -> Callable[[], dict[str, Any]]:
            if database is not None:
                with self._admin() as conn:
                    self._drop(conn, database)

            def commit() -> dict[str, Any]:
                project.branches.pop(branch.branch_id, None)
                return {}

            return commit

        def rollback() -> None:
            branch.deleting = None

        self._run_operation(op, work, rollback, fault)
        return op

    def _list_endpoints(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            _project, branch = self._branch(*request.params)
            return {"endpoints": [self._endpoint_json(branch, e) for e in branch.endpoints.values()]}

    def _get_endpoint(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            branch, endpoint = self._endpoint(*request.params)
            return self._endpoint_json(branch, endpoint)

    def _create_endpoint(self, request: _Request) -> dict[str, Any]:
        project_id, branch_id = request.params
        endpoint_id = request.query.get("endpoint_id", "")
        if not RESOURCE_ID.match(endpoint_id):
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"endpoint_id {endpoint_id!r} is not a valid resource id"
            )
        spec = request.body.get("spec")
        if not isinstance(spec, dict) or spec.get("endpoint_type") not in (READ_WRITE, READ_ONLY):
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"spec.endpoint_type must be {READ_WRITE} or {READ_ONLY}"
            )
        replace = request.query.get("replace_existing") == "true"
        with self._lock:
            project, branch = self._branch(project_id, branch_id)
            if branch.deleting is not None:
                raise ApiError(400, "FAILED_PRECONDITION", f"{branch.name} is being deleted")
            existing = branch.endpoints.get(endpoint_id)
            if existing is not None and not replace:
                raise ApiError(
                    409, "ALREADY_EXISTS", f"Endpoint {branch.name}/endpoints/{endpoint_id} already exists"
                )
            if spec["endpoint_type"] == READ_WRITE and any(
                e.spec.get("endpoint_type") == READ_WRITE and e is not existing
                for e in branch.endpoints.values()
            ):
                raise ApiError(409, "ALREADY_EXISTS", f"{branch.name} already has a read-write endpoint")
            op = self._new_operation(project, "create_endpoint")
            now = _now()
            if existing is not None:
                previous = existing.spec
                endpoint = existing
                endpoint.spec, endpoint.updated = dict(spec), now

                def rollback() -> None:
                    endpoint.spec = previous

            else:
                endpoint = _Endpoint(endpoint_id, "ep-" + secrets.token_hex(8), now, now, dict(spec))
                branch.endpoints[endpoint_id] = endpoint

                def rollback() -> None:
                    branch.endpoints.pop(endpoint_id, None)

        def work() -> Callable[[], dict[str, Any]]:
            def commit() -> dict[str, Any]:
                endpoint.state, endpoint.updated = "ACTIVE", _now()
                return self._endpoint_json(branch, endpoint)

            return commit

        self._run_operation(op, work, rollback, request.fault)
        return op.as_json()

    def _delete_endpoint(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            project = self._project(request.params[0])
            branch, endpoint = self._endpoint(*request.params)
            op = self._new_operation(project, "delete_endpoint")

        def work() -> Callable[[], dict[str, Any]]:
            def commit() -> dict[str, Any]:
                branch.endpoints.pop(endpoint.endpoint_id, None)
                return {}

            return commit

        self._run_operation(op, work, lambda: None, request.fault)
        return op.as_json()

    def _list_databases(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            _project, branch = self._branch(*request.params)
            return {"databases": [self._database_json(branch)]}

    def _get_database(self, request: _Request) -> dict[str, Any]:
        project_id, branch_id, database_id = request.params
        with self._lock:
            _project, branch = self._branch(project_id, branch_id)
            if database_id != DATABASE_ID:
                raise ApiError(404, "NOT_FOUND", f"Database {branch.name}/databases/{database_id} not found")
            return self._database_json(branch)

    def _get_operation(self, request: _Request) -> dict[str, Any]:
        project_id, operation_id = request.params
        with self._lock:
            op = self._project(project_id).operations.get(operation_id)
            if op is None:
                raise ApiError(
                    404, "NOT_FOUND", f"Operation projects/{project_id}/operations/{operation_id} not found"
                )
            return op.as_json()

    def _generate_credential(self, request: _Request) -> dict[str, Any]:
        endpoint_name = request.body.get("endpoint")
        match = _ENDPOINT_NAME.match(endpoint_name) if isinstance(endpoint_name, str) else None
        if match is None:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "endpoint must be projects/{project}/branches/{branch}/endpoints/{endpoint}, "
                f"got {endpoint_name!r}",
            )
        now = _now()
        lifetime = timedelta(seconds=self.credential_lifetime)
        if request.body.get("ttl") is not None:
            lifetime = parse_duration(request.body["ttl"], "ttl")
        elif request.body.get("expire_time") is not None:
            lifetime = parse_time(request.body["expire_time"], "expire_time") - now
        if ("ttl" in request.body or "expire_time" in request.body) and not (
            CREDENTIAL_TTL_RANGE[0] - timedelta(seconds=1) <= lifetime <= CREDENTIAL_TTL_RANGE[1]
        ):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "a credential must live between 300s and 3600s")
        project_id, branch_id, endpoint_id = match.groups()
        with self._lock:
            self._endpoint(project_id, branch_id, endpoint_id)
            token = secrets.token_urlsafe(32)
            expires = now + lifetime
            self._credentials[token] = _Credential(project_id, branch_id, endpoint_id, expires)
        return {"token": token, "expire_time": format_time(expires)}


def _fail(error_code: str, message: str) -> Callable[[], Callable[[], dict[str, Any]]]:
    def work() -> Callable[[], dict[str, Any]]:
        raise _OperationFailure(error_code, message)

    return work


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii").rstrip("=")


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        offset = int(text.removeprefix("offset:")) if text.startswith("offset:") else -1
    except ValueError:
        offset = -1
    if offset < 0:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"invalid page_token {token!r}")
    return offset


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise ApiError(400, "MALFORMED_REQUEST", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "the request body must be a JSON object")
    return data


# -- routing ---------------------------------------------------------------------------------

_E = LakebaseEmulator
_PROJECT = "/api/2.0/postgres/projects/*"
_BRANCH = _PROJECT + "/branches/*"
_ROUTE_TABLE: list[tuple[str, str, str, _Handler]] = [
    ("GET", "/.well-known/databricks-config", "host_metadata", _E._host_metadata),
    ("GET", "/api/2.0/preview/scim/v2/Me", "me", _E._me),
    ("POST", "/api/2.0/postgres/credentials", "generate_database_credential", _E._generate_credential),
    ("GET", "/api/2.0/postgres/projects", "list_projects", _E._list_projects),
    ("GET", _PROJECT, "get_project", _E._get_project),
    ("GET", _PROJECT + "/operations/*", "get_operation", _E._get_operation),
    ("GET", _PROJECT + "/branches", "list_branches", _E._list_branches),
    ("POST", _PROJECT + "/branches", "create_branch", _E._create_branch),
    ("GET", _BRANCH, "get_branch", _E._get_branch),
    ("DELETE", _BRANCH, "delete_branch", _E._delete_branch),
    ("GET", _BRANCH + "/endpoints", "list_endpoints", _E._list_endpoints),
    ("POST", _BRANCH + "/endpoints", "create_endpoint", _E._create_endpoint),
    ("GET", _BRANCH + "/endpoints/*", "get_endpoint", _E._get_endpoint),
    ("DELETE", _BRANCH + "/endpoints/*", "delete_endpoint", _E._delete_endpoint),
    ("GET", _BRANCH + "/databases", "list_databases", _E._list_databases),
    ("GET", _BRANCH + "/databases/*", "get_database", _E._get_database),
]
# "*" is one path segment; SDK names are interpolated into paths unescaped, so segments never hold "/".
_ROUTES = [
    (method, re.compile("^" + re.escape(template).replace(r"\*", "([^/]+)") + "$"), kind, handler)
    for method, template, kind, handler in _ROUTE_TABLE
]


def _route(method: str, path: str) -> tuple[str, _Handler, tuple[str, ...]] | None:
    for route_method, pattern, kind, handler in _ROUTES:
        if route_method == method:
            match = pattern.match(path)
            if match is not None:
                return kind, handler, match.groups()
    return None


class _HttpServer(ThreadingHTTPServer):
    # Handler threads are joined on server_close(), so stop() leaves none behind.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], emulator: LakebaseEmulator
    ) -> None:
        self.emulator = emulator
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is routine for a test server, not worth a traceback.
        logger.debug("HTTP connection from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    # One request per connection: nothing idles in a handler thread after an answer.
    protocol_version = "HTTP/1.0"
    timeout = 30
    server: _HttpServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "invalid Content-Length")
            return
        # Read the body even when refusing: closing with unread input makes the kernel send a
        # reset, and the client would then see a broken connection instead of our answer.
        raw = self.rfile.read(length) if length > 0 else b""
        reply = self.server.emulator._dispatch(method, self.path, self.headers, raw)
        if reply.payload is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = json.dumps(reply.payload).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


# -- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """For running a Lakebase-configured suite by hand: the printed variables point it here."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dbbranch.lakebase_emulator",
        description="Local Databricks Lakebase Autoscaling emulator backed by a real PostgreSQL server.",
    )
    parser.add_argument(
        "--backing-url",
        default=os.environ.get("DBBRANCH_EMULATOR_BACKING_URL"),
        help="PostgreSQL server that holds the branches (default: $DBBRANCH_EMULATOR_BACKING_URL, "
        "else the plugin's embedded server)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="HTTP port of the REST API (default: any free port)"
    )
    parser.add_argument("--pg-port", type=int, default=0, help="port of the PostgreSQL proxy (default: any)")
    parser.add_argument("--project", action="append", help="project id to create (repeatable; default: demo)")
    parser.add_argument("--source-database", help="backing database to clone into each project's production")
    parser.add_argument("--token", default="dapi-emulator", help="personal access token clients must send")
    parser.add_argument(
        "--branch-limit", type=int, default=10, help="live branches per project (default: 10)"
    )
    parser.add_argument(
        "--operation-delay", type=float, default=0.05, help="seconds an operation takes at least"
    )
    args = parser.parse_args(argv)
    embedded: EmbeddedServer | None = None
    password: str | None = None
    try:
        if args.backing_url:
            backing = ServerAddress.parse(args.backing_url, where="--backing-url")
        else:
            from ..server.embedded import EmbeddedServer

            embedded = EmbeddedServer(None)
            backing = embedded.acquire("emulator")
        password = backing.password
        _serve(args, backing)
    except (DbBranchError, psycopg.Error, OSError) as exc:
        print(f"lakebase emulator: {redact_text(str(exc), password)}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.release("emulator")
    return 0


def _serve(args: argparse.Namespace, backing: ServerAddress) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C still raises KeyboardInterrupt
            previous[signum] = signal.signal(signum, on_signal)
    projects: list[str] = args.project or ["demo"]
    emulator = LakebaseEmulator(
        backing,
        token=args.token,
        branch_limit=args.branch_limit,
        operation_delay=args.operation_delay,
        http_port=args.port,
        pg_port=args.pg_port,
    )
    try:
        with emulator:
            for project_id in projects:
                emulator.create_project(project_id, source_database=args.source_database)
            print(f"DATABRICKS_HOST={emulator.url}")
            print(f"DATABRICKS_TOKEN={emulator.token}")
            print(f"DBBRANCH_LAKEBASE_PORT={emulator.pg_port}")
            print(f"DBBRANCH_LAKEBASE_SSLMODE={emulator.sslmode}", flush=True)
            print(
                f"Lakebase emulator: projects {', '.join(projects)} for {emulator.user_name}, "
                f"branches on {backing.display_url()}. Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
