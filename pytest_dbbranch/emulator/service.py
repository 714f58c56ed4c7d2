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

import contextlib
import functools
import secrets
import threading
from datetime import timedelta
from types import TracebackType
from typing import Any

import psycopg

from ..conninfo import ServerAddress
from .api import dispatch
from .core import EmulatorCore
from .http import HttpServer
from .proxy import PgProxy, ProxyRefusal
from .state import DEFAULT_BRANCH, POSTGRES_DATABASE, RESOURCE_ID, Branch, Fault, Project, primary_endpoint
from .tls import make_tls_context
from .views import branch_json
from .wire import format_time, now

REAPER_INTERVAL = 0.2


class LakebaseEmulator(EmulatorCore):
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
        super().__init__(
            backing,
            token=token,
            user_name=user_name,
            branch_limit=branch_limit,
            operation_delay=operation_delay,
            credential_lifetime=credential_lifetime,
            auto_endpoint=auto_endpoint,
            page_size=page_size,
        )
        self._http_port = http_port
        self._pg_port = pg_port
        self._http: HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._proxy: PgProxy | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LakebaseEmulator:
        try:
            with self.databases.admin() as conn:
                self.pg_version = conn.info.server_version // 10000
            self._proxy = PgProxy(self.backing, self._authorize, port=self._pg_port, tls=make_tls_context())
            self._proxy.start()
            self._http = HttpServer(("127.0.0.1", self._http_port), functools.partial(dispatch, self))
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
        self.stopping.set()
        if self._http is not None:
            if self._http_thread is not None:
                self._http.shutdown()
                self._http_thread.join()
            self._http.server_close()
        if self._reaper is not None:
            self._reaper.join()
        self.join_workers()
        if self._proxy is not None:
            self._proxy.stop()
        with contextlib.suppress(psycopg.Error):
            self.databases.drop_all_ours()

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
        with self.lock:
            if project_id in self.projects:
                raise ValueError(f"project {project_id!r} already exists")
        created = now()
        project = Project(project_id, "prj-" + secrets.token_hex(8), created)
        spec: dict[str, Any] = {"no_expiry": True}
        if protected:
            spec["is_protected"] = True
        branch = Branch(
            project_id=project_id,
            branch_id=DEFAULT_BRANCH,
            uid="br-" + secrets.token_hex(8),
            created=created,
            updated=created,
            spec=spec,
            default=True,
            protected=protected,
            expire_at=None,
            source_branch=None,
        )
        database = self.databases.new_name(project_id, DEFAULT_BRANCH)
        tag = self.databases.tag(project_id, DEFAULT_BRANCH)
        if source_database is None:
            self.databases.create(database, tag)
        else:
            self.databases.clone(source_database, database, tag)
        branch.database, branch.state, branch.size = database, "READY", self.databases.size(database)
        if self.auto_endpoint:
            branch.endpoints["primary"] = primary_endpoint(created)
        project.branches[DEFAULT_BRANCH] = branch
        with self.lock:
            self.projects[project_id] = project

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
        fault = Fault(
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
        with self.lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def expire_credentials(self) -> None:
        past = now() - timedelta(seconds=1)
        with self.lock:
            for credential in self.credentials.values():
                credential.expires = min(credential.expires, past)

    def revoke_pat(self, message: str = "Token expired") -> None:
        with self.lock:
            self.revoked = message

    def calls(self) -> dict[str, int]:
        with self.lock:
            return dict(self.call_counts)

    def user_agents(self) -> set[str]:
        """User-Agent headers seen, so a client can prove it names itself."""
        with self.lock:
            return set(self.seen_user_agents)

    def branches(self, project_id: str) -> list[dict[str, Any]]:
        with self.lock:
            project = self.projects.get(project_id)
            if project is None:
                raise KeyError(f"no project {project_id!r}")
            return [branch_json(branch) for branch in project.branches.values()]

    def database_of(self, project_id: str, branch_id: str) -> str:
        with self.lock:
            project = self.projects.get(project_id)
            branch = project.branches.get(branch_id) if project is not None else None
            if branch is None or branch.database is None:
                raise KeyError(f"projects/{project_id}/branches/{branch_id} has no database")
            return branch.database

    # -- background work -------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self.stopping.wait(REAPER_INTERVAL):
            moment = now()
            with self.lock:
                for project in self.projects.values():
                    for branch in list(project.branches.values()):
                        expired = branch.expire_at is not None and branch.expire_at <= moment
                        if expired and branch.usable and not self.refuse_delete_reason(project, branch):
                            self.begin_delete(project, branch, None)

    # -- authorization of PostgreSQL logins ------------------------------------------------

    def _authorize(self, user: str, database: str, password: str) -> str:
        failed = f'password authentication failed for user "{user}"'
        with self.lock:
            credential = self.credentials.get(password)
            if credential is None:
                raise ProxyRefusal("28P01", failed)
            if credential.expires <= now():
                raise ProxyRefusal(
                    "28P01",
                    failed,
                    f"The database credential (OAuth token) expired at {format_time(credential.expires)}; "
                    "generate a new one with generate_database_credential.",
                )
            if user != self.user_name:
                raise ProxyRefusal("28P01", failed, f"The token was issued to {self.user_name}.")
            project = self.projects.get(credential.project_id)
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
                b.database for p in self.projects.values() for b in p.branches.values() if b.database
            }
            if database in backing_names:
                raise ProxyRefusal("3D000", f'database "{database}" does not exist')
            return database
