"""An offline stand-in for Databricks Lakebase Autoscaling, backed by real PostgreSQL.

Why it exists: Lakebase-configured suites should run on a laptop or in CI without a workspace,
and the plugin's Lakebase backend must be tested with the real ``databricks-sdk`` client rather
than mocks that agree with whatever the code assumes. So this speaks the REST subset that
``w.postgres`` and ``w.current_user.me()`` use, with the same JSON shapes, long-running
operations, error codes and limits; a branch is a real PostgreSQL cluster forked from its
parent's; endpoints have their own host on port 5432; sessions log in as the identity's own
role with a short-lived token over TLS. Every known difference from the service is a switch
(see ``options.Behaviour``), so the older, simpler behaviours stay reachable.
"""

from __future__ import annotations

import functools
import secrets
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from ..conninfo import ServerAddress
from . import hosts
from .api import dispatch
from .core import EmulatorCore
from .http import HttpServer
from .logins import authorize
from .options import FAST, REALISTIC, Behaviour, HostStyle, LimitError, Timing, TtlWithChildren, as_range
from .proxy import PgProxy
from .state import DEFAULT_BRANCH, RESOURCE_ID, Branch, Fault, Project, primary_endpoint
from .storage import ClusterStorage, DatabaseStorage, Storage
from .tls import make_tls_context
from .views import branch_json
from .wire import now

REAPER_INTERVAL = 0.2


class LakebaseEmulator(EmulatorCore):
    """REST API and wire proxy in one object, because tokens the API issues are what the proxy accepts.

    ``timing`` picks the defaults of the timing knobs ("realistic": 1-1.5 s operations, a
    compute that starts 0.5 s after its branch, suspends after 300 s idle and wakes in 0.3 s;
    "fast": the older near-instant behaviour); any knob given explicitly wins. ``storage``
    "cluster" (default) runs one PostgreSQL cluster per branch under ``data_dir``; "database"
    is the older model, one database per branch on the ``backing`` server.
    """

    def __init__(
        self,
        backing: ServerAddress | None = None,
        *,
        storage: str = "cluster",
        data_dir: Path | str | None = None,
        token: str = "dapi-emulator",
        user_name: str = "alice@example.com",
        timing: Timing = "realistic",
        operation_delay: float | tuple[float, float] | None = None,
        compute_start_delay: float | None = None,
        suspend_timeout: float | str | None = "default",
        cold_start_delay: float | None = None,
        credential_lifetime: float = 3600.0,
        auto_endpoint: bool = True,
        host_style: HostStyle = "auto",
        tls_required: bool = True,
        soft_delete: bool = True,
        branch_rules: bool = True,
        ttl_with_children: TtlWithChildren = "refuse-child",
        branch_limit: int = 10,
        limit_error: LimitError = "request",
        page_size: int = 50,
        http_port: int = 0,
        pg_port: int = 0,
    ) -> None:
        base = FAST if timing == "fast" else REALISTIC
        behaviour = replace(
            base,
            auto_endpoint=auto_endpoint,
            host_style=host_style,
            tls_required=tls_required,
            soft_delete=soft_delete,
            branch_rules=branch_rules,
            ttl_with_children=ttl_with_children,
            branch_limit=branch_limit,
            limit_error=limit_error,
            credential_lifetime=credential_lifetime,
        )
        if operation_delay is not None:
            behaviour = replace(behaviour, operation_delay=as_range(operation_delay))
        if compute_start_delay is not None:
            behaviour = replace(behaviour, compute_start_delay=compute_start_delay)
        if suspend_timeout != "default":
            behaviour = replace(
                behaviour, suspend_timeout=None if suspend_timeout is None else float(suspend_timeout)
            )
        if cold_start_delay is not None:
            behaviour = replace(behaviour, cold_start_delay=cold_start_delay)
        instance_storage: Storage
        if storage == "database":
            if backing is None:
                raise ValueError("storage='database' needs a backing server address")
            instance_storage = DatabaseStorage(backing, secrets.token_hex(6))
        elif storage == "cluster":
            folder = Path(data_dir) if data_dir is not None else None
            instance_storage = ClusterStorage(folder, user_name, secrets.token_hex(6))
        else:
            raise ValueError(f"storage must be 'cluster' or 'database', not {storage!r}")
        super().__init__(instance_storage, behaviour, token=token, user_name=user_name, page_size=page_size)
        self.backing = backing
        self._http_port = http_port
        self._pg_port = pg_port
        self._http: HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LakebaseEmulator:
        try:
            self.pg_version = self.storage.major_version()
            self.proxy = PgProxy(
                functools.partial(authorize, self),
                tls=make_tls_context(),
                tls_required=self.behaviour.tls_required,
            )
            self.single_port = self.proxy.listen("127.0.0.1", self._pg_port)
            style = self.behaviour.host_style
            self.loopback = style == "loopback" or (style == "auto" and hosts.loopback_works())
            self.proxy.start()
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
        """Leaves nothing behind: clusters stopped and removed, or backing databases dropped."""
        self.stopping.set()
        if self._http is not None:
            if self._http_thread is not None:
                self._http.shutdown()
                self._http_thread.join()
            self._http.server_close()
        if self._reaper is not None:
            self._reaper.join()
        self.join_workers()
        if self.proxy is not None:
            self.proxy.stop()
        with self.lock:
            for host in list(self.by_host):
                hosts.release(host)
            self.by_host.clear()
        self.storage.close()

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
        """The port to use with an endpoint's ``hosts.host``: 5432, or the single shared port."""
        if self.proxy is None:
            raise RuntimeError("the emulator is not started")
        return hosts.ENDPOINT_PORT if self.loopback else self.single_port

    @property
    def sslmode(self) -> str:
        """What a client should ask for: 'require' unless the proxy could not get a certificate."""
        return "require" if self.proxy is not None and self.proxy.tls_enabled else "prefer"

    # -- identities and projects -----------------------------------------------------------

    def add_identity(self, name: str, token: str | None = None) -> str:
        """Another Databricks identity (a CI service principal): returns its personal access token.

        Its role is created on every project's production branch now, and on projects made
        later; branches that exist already do not get it, as roles are inherited at fork time.
        """
        pat = token or "dapi-" + secrets.token_hex(16)
        with self.lock:
            if name in self.identities.values():
                raise ValueError(f"identity {name!r} exists already")
            self.identities[pat] = name
            handles = [p.branches[p.default_branch].handle for p in self.projects.values()]
        for handle in handles:
            if handle is not None:
                self.storage.add_role(handle, name)
        return pat

    def create_project(
        self, project_id: str, *, source_database: str | None = None, protected: bool = False
    ) -> None:
        """``source_database`` (a database on ``backing``) seeds production's databricks_postgres."""
        if not RESOURCE_ID.match(project_id):
            raise ValueError(f"project id {project_id!r} is not a valid Lakebase resource id")
        with self.lock:
            if project_id in self.projects:
                raise ValueError(f"project {project_id!r} already exists")
            others = [name for name in self.identities.values() if name != self.user_name]
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
        handle = self.storage.create_root(project_id, self.backing, source_database)
        for name in others:
            self.storage.add_role(handle, name)
        branch.handle, branch.state, branch.size = handle, "READY", self.storage.size(handle)
        project.branches[DEFAULT_BRANCH] = branch
        with self.lock:
            self.projects[project_id] = project
            if self.behaviour.auto_endpoint:
                endpoint = primary_endpoint(created)
                branch.endpoints["primary"] = endpoint
                self.bring_up(branch, endpoint, delayed=False)

    def endpoint_host(self, project_id: str, branch_id: str, endpoint_id: str = "primary") -> str | None:
        """Where the endpoint listens (None while its compute starts): the API's ``hosts.host``."""
        with self.lock:
            _branch, endpoint = self.lookup_endpoint(project_id, branch_id, endpoint_id)
            return endpoint.host

    # -- test controls ---------------------------------------------------------------------

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
            return [branch_json(branch) for branch in project.branches.values() if branch.live]

    def database_of(self, project_id: str, branch_id: str) -> str:
        """The storage's name for a branch's data: a backing database, or a cluster key."""
        with self.lock:
            project = self.projects.get(project_id)
            branch = project.branches.get(branch_id) if project is not None else None
            if branch is None or branch.handle is None:
                raise KeyError(f"projects/{project_id}/branches/{branch_id} has no data")
            return branch.handle

    # -- background work -------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self.stopping.wait(REAPER_INTERVAL):
            moment = now()
            with self.lock:
                for project in self.projects.values():
                    for branch in list(project.branches.values()):
                        expired = branch.expire_at is not None and branch.expire_at <= moment
                        if expired and branch.usable and not self.refuse_delete_reason(project, branch):
                            self.begin_delete(project, branch, None, purge=True)
            self.suspend_idle()


__all__ = ["Behaviour", "LakebaseEmulator"]
