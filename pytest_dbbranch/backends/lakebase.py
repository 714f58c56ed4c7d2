"""Lakebase backend: copy-on-write branches of a Databricks Lakebase project.

A branch is a real Lakebase branch (``w.postgres.create_branch``), always with a TTL so a
crashed run's branches expire on their own. Clients connect to the branch's read-write
endpoint with an OAuth database credential as the password. The SDK's own ``Operation.wait``
sleeps 1-10 s between polls; we poll ``get_operation`` ourselves with a short, bounded
backoff and turn failures (the SDK raises a plain ``Exception`` for a failed operation) into
errors that say what to fix.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql

from .. import names
from ..conninfo import ServerAddress
from ..errors import BranchExistsError, ConfigError, DbBranchError, NotOursError, ServerError, SourceError
from ..settings import Settings
from .base import BranchRecord, Tag
from .budget import BranchBudget

if TYPE_CHECKING:
    from ..branching.sources import Source

T = TypeVar("T")

PRODUCT = "pytest-dbbranch"
OPERATION_TIMEOUT = 600.0
RETRY_BUDGET = 300.0


class LakebaseOperationError(DbBranchError):
    def __init__(self, code: str, message: str, what: str) -> None:
        super().__init__(f"Lakebase {what} failed: [{code}] {message}")
        self.code = code


def make_client(settings: Settings) -> Any:
    """databricks-sdk's unified auth (environment, ~/.databrickscfg, profile), with our
    product name in the user agent."""
    try:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config
    except ImportError:
        raise ConfigError(
            "the Lakebase backend needs databricks-sdk: pip install 'pytest-dbbranch[lakebase]'"
        ) from None
    from .._version import __version__

    try:
        config = Config(
            profile=settings.lakebase_profile,
            product=PRODUCT,
            product_version=__version__,
            retry_timeout_seconds=60,
            http_timeout_seconds=60,
        )
    except ValueError as exc:
        raise ConfigError(f"Databricks authentication is not configured: {exc}") from None
    return WorkspaceClient(config=config)


class LakebaseBackend:
    """Branches of one Lakebase project, as the plugin's ``Backend``."""

    kind = "lakebase"
    has_global_lock = False

    def __init__(self, settings: Settings, *, lock_root: Path, client: Any = None) -> None:
        if not settings.lakebase_project:
            raise ConfigError(
                "the Lakebase backend needs a project: set dbbranch_lakebase_project "
                "(--dbbranch-lakebase-project / DBBRANCH_LAKEBASE_PROJECT)"
            )
        from databricks.sdk import errors

        self._errors = errors
        self._settings = settings
        project_id = settings.lakebase_project.removeprefix("projects/")
        self.project = f"projects/{project_id}"
        self.w = client if client is not None else make_client(settings)
        try:
            project = self._api("read the project", lambda: self.w.postgres.get_project(self.project))
        except LookupError:
            raise ConfigError(
                f"Lakebase project {self.project} not found (dbbranch_lakebase_project); "
                "check the project id and the workspace"
            ) from None
        status = project.status
        self.default_branch: str = (status.default_branch if status else None) or (
            f"{self.project}/branches/production"
        )
        self.server_version: int = int((status.pg_version if status else None) or 0)
        self.server_key = f"lakebase:{self.w.config.host}:{self.project}"
        me = self._api("identify the current user", self.w.current_user.me)
        self.user: str = me.user_name or ""
        self._mutex = threading.RLock()
        self._tags: dict[str, Tag] = {}
        self._hosts: dict[str, tuple[str, str]] = {}
        self._credentials: dict[str, tuple[str, float, float]] = {}
        key = names.short_hash(self.server_key, 10)
        self.budget = BranchBudget(lock_root / f"budget-{key}", settings.lakebase_budget)
        self.source_branch = self.default_branch

    # -- protocol ---------------------------------------------------------------------------

    def source_parent(self, source: Source, run_id: str) -> str:
        """On Lakebase the source is a branch of the project (default: its default branch)."""
        if source.kind == "dump":
            raise SourceError(
                f"{source.where}: a dump file cannot be the source on Lakebase; restore it into "
                "a branch of the project and name that branch"
            )
        if source.kind == "empty":
            self.source_branch = self.default_branch
        else:
            self.source_branch = self.full(source.location)
            try:
                self.w.postgres.get_branch(self.source_branch)
            except self._errors.NotFound:
                raise SourceError(
                    f"{source.where}: source branch {self.source_branch} does not exist"
                ) from None
        return self.source_branch

    def fork(self, name: str, parent: str, tag: Tag) -> None:
        from databricks.sdk.service.postgres import BranchSpec
        from google.protobuf.duration_pb2 import Duration
        from google.protobuf.timestamp_pb2 import Timestamp

        source = self.full(parent)
        ttl = self._settings.lakebase_template_ttl if tag.kind == "template" else self._settings.lakebase_ttl
        spec = BranchSpec(source_branch=source, ttl=Duration(seconds=ttl))
        if self._settings.lakebase_source_time and source == self.source_branch:
            stamp = Timestamp()
            stamp.FromJsonString(self._settings.lakebase_source_time)
            spec.source_branch_time = stamp
        counted = tag.kind == "branch"
        if counted:
            self.budget.acquire(name)
        try:
            self._create(name, spec)
            try:
                self._write_tag(name, tag)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._delete(name)
                raise
        except BaseException:
            if counted:
                self.budget.release(name)
            raise

    def seal(self, name: str, tag: Tag) -> None:
        self._write_tag(name, tag.sealed())

    def describe(self, name: str) -> BranchRecord | None:
        branch = self._get(name)
        if branch is None or self._is_guarded(branch):
            return None
        cached = self._tags.get(name)
        # A template sealed by another process since we last looked: read it again.
        tag = cached if cached is not None and cached.ready else self._read_tag(name)
        if tag is None:
            return None
        return BranchRecord(
            name=name,
            tag=tag,
            is_template=tag.kind == "template",
            allows_connections=not tag.ready,
            size_bytes=_int(getattr(branch.status, "logical_size_bytes", None)),
        )

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def list_ours(self) -> list[BranchRecord]:
        records = []
        for branch in self._api("list branches", lambda: list(self.w.postgres.list_branches(self.project))):
            branch_id = (branch.name or "").rsplit("/", 1)[-1]
            if not names.is_ours(branch_id) or self._is_guarded(branch):
                continue
            tag = self._tags.get(branch_id) or self._read_tag(branch_id)
            if tag is not None:
                records.append(
                    BranchRecord(
                        name=branch_id,
                        tag=tag,
                        is_template=tag.kind == "template",
                        allows_connections=not tag.ready,
                        size_bytes=_int(getattr(branch.status, "logical_size_bytes", None)),
                        expires_at=_seconds(getattr(branch.status, "expire_time", None)),
                    )
                )
        return records

    def drop(self, name: str) -> None:
        try:
            branch = self._get(name)
            if branch is None:
                return
            if self._is_guarded(branch) or self.full(name) == self.source_branch:
                raise NotOursError(
                    f"refusing to delete Lakebase branch {self.full(name)}: it is the source, the "
                    "default or a protected branch"
                )
            if self._tags.get(name) is None and self._read_tag(name) is None:
                raise NotOursError(
                    f"refusing to delete Lakebase branch {self.full(name)}: it carries no "
                    "pytest-dbbranch tag, so this tool did not create it"
                )
            self._delete(name)
        finally:
            self.budget.release(name)

    def retag(self, name: str, tag: Tag) -> None:
        self._write_tag(name, tag)

    def address(self, name: str) -> ServerAddress:
        host, endpoint = self._endpoint(name)
        return ServerAddress(
            host=host,
            port=self._settings.lakebase_port,
            user=self.user,
            password=self._credential(endpoint),
            dbname=self._settings.lakebase_database,
            options=(("sslmode", self._settings.lakebase_sslmode),),
        )

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Across machines the create call's conflict is the lock (see ``fork``)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        self.budget.release_all()

    # -- API helpers ------------------------------------------------------------------------

    def full(self, name: str) -> str:
        return name if name.startswith("projects/") else f"{self.project}/branches/{name}"

    def _is_guarded(self, branch: Any) -> bool:
        status = branch.status
        return bool(status and (status.default or status.is_protected))

    def _get(self, name: str) -> Any:
        try:
            return self._api("read a branch", lambda: self.w.postgres.get_branch(self.full(name)))
        except LookupError:
            return None

    def _create(self, name: str, spec: Any) -> None:
        from databricks.sdk.service.postgres import Branch

        deadline = time.monotonic() + RETRY_BUDGET
        attempt = 0
        while True:
            try:
                operation = self._api(
                    f"create branch {name}",
                    lambda: self.w.postgres.create_branch(
                        parent=self.project, branch=Branch(spec=spec), branch_id=name
                    ),
                    conflict=True,
                )
                self._wait(operation.name(), f"create branch {name}")
                return
            except LakebaseOperationError as exc:
                if exc.code != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                    raise
            attempt += 1
            _backoff(attempt)

    def _delete(self, name: str) -> None:
        try:
            operation = self._api(
                f"delete branch {name}", lambda: self.w.postgres.delete_branch(self.full(name))
            )
        except LookupError:
            return
        try:
            self._wait(operation.name(), f"delete branch {name}")
        except LakebaseOperationError as exc:
            if exc.code not in ("NOT_FOUND", "RESOURCE_DOES_NOT_EXIST"):
                raise
        with self._mutex:
            self._tags.pop(name, None)
            self._hosts.pop(name, None)

    def _wait(self, operation_name: str, what: str, timeout: float = OPERATION_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            operation = self._api(f"poll {what}", lambda: self.w.postgres.get_operation(operation_name))
            if operation.done:
                if operation.error is not None:
                    code = operation.error.error_code
                    code_text = code.value if hasattr(code, "value") else str(code or "UNKNOWN")
                    raise LakebaseOperationError(code_text, operation.error.message or "", what)
                return operation
            if time.monotonic() + delay > deadline:
                raise DbBranchError(
                    f"Lakebase {what}: not done after {timeout:.0f}s (operation {operation_name})"
                )
            time.sleep(delay)
            delay = min(delay * 1.6, 2.0)

    def _api(self, what: str, call: Callable[[], T], *, conflict: bool = False) -> T:
        """One API call: 429/503 retried with jittered backoff; errors made readable."""
        errors = self._errors
        deadline = time.monotonic() + RETRY_BUDGET
        attempt = 0
        while True:
            try:
                return call()
            except errors.NotFound:
                raise LookupError(what) from None
            except errors.ResourceConflict as exc:
                if conflict:
                    raise BranchExistsError(f"Lakebase: {what}: {_message(exc)}") from None
                raise DbBranchError(f"Lakebase: cannot {what}: {_message(exc)}") from None
            except errors.Unauthenticated as exc:
                raise ServerError(
                    f"Lakebase rejected the credentials while trying to {what} (401: {_message(exc)}); the "
                    "token is missing, wrong or expired: refresh it (DATABRICKS_TOKEN, "
                    "`databricks auth login`, or dbbranch_lakebase_profile)"
                ) from None
            except errors.PermissionDenied as exc:
                raise ServerError(
                    f"Lakebase refused to {what} (403: {_message(exc)}); the identity needs CAN MANAGE on "
                    f"{self.project}"
                ) from None
            except (errors.TooManyRequests, errors.TemporarilyUnavailable, TimeoutError) as exc:
                attempt += 1
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"Lakebase kept refusing to {what} (rate limited or unavailable: {_message(exc)})"
                    ) from None
                _backoff(attempt)
            except errors.BadRequest as exc:
                raise DbBranchError(f"Lakebase rejected the request to {what}: {_message(exc)}") from None

    # -- endpoints, credentials, tags -------------------------------------------------------

    def _endpoint(self, name: str) -> tuple[str, str]:
        """Host and resource name of the branch's read-write endpoint, created if missing."""
        with self._mutex:
            cached = self._hosts.get(name)
        if cached:
            return cached
        from databricks.sdk.service.postgres import Endpoint, EndpointSpec, EndpointType
        from google.protobuf.duration_pb2 import Duration

        branch = self.full(name)
        endpoint = None
        for candidate in self._api("list endpoints", lambda: list(self.w.postgres.list_endpoints(branch))):
            status = candidate.status
            if status and status.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_WRITE:
                endpoint = candidate
                break
        if endpoint is None:
            spec = EndpointSpec(
                endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE,
                autoscaling_limit_min_cu=0.5,
                autoscaling_limit_max_cu=1.0,
                suspend_timeout_duration=Duration(seconds=300),
            )
            try:
                operation = self._api(
                    f"create an endpoint for {name}",
                    lambda: self.w.postgres.create_endpoint(
                        parent=branch, endpoint=Endpoint(spec=spec), endpoint_id="primary"
                    ),
                    conflict=True,
                )
                self._wait(operation.name(), f"create an endpoint for {name}")
            except BranchExistsError:
                pass  # created concurrently (another worker, or implicitly by the service)
            endpoint = self._api(
                "read the endpoint", lambda: self.w.postgres.get_endpoint(f"{branch}/endpoints/primary")
            )
        host = endpoint.status.hosts.host if endpoint.status and endpoint.status.hosts else None
        if not host:
            raise DbBranchError(f"Lakebase endpoint {endpoint.name} has no host yet")
        result = (host, endpoint.name)
        with self._mutex:
            self._hosts[name] = result
        return result

    def _credential(self, endpoint: str) -> str:
        """Reuse a token until it is close to expiry (expiry only matters at login)."""
        now = time.time()
        with self._mutex:
            cached = self._credentials.get(endpoint)
        if cached is not None:
            token, issued, expires = cached
            margin = max(1.0, min(300.0, 0.2 * (expires - issued)))
            if now < expires - margin:
                return token
        credential = self._api(
            "get a database credential",
            lambda: self.w.postgres.generate_database_credential(endpoint=endpoint),
        )
        expires_at = credential.expire_time.ToSeconds() if credential.expire_time else now + 3600
        with self._mutex:
            self._credentials[endpoint] = (credential.token, now, float(expires_at))
        return str(credential.token)

    def forget_credentials(self, name: str) -> None:
        """Drop the cached token of ``name``'s endpoint (it was refused at login)."""
        with self._mutex:
            cached = self._hosts.get(name)
            if cached is not None:
                self._credentials.pop(cached[1], None)

    def _connect(self, name: str) -> psycopg.Connection[Any]:
        address = self.address(name)
        try:
            try:
                return psycopg.connect(address.conninfo(), autocommit=True, connect_timeout=30)
            except psycopg.OperationalError as exc:
                if "password authentication failed" not in str(exc):
                    raise
                self.forget_credentials(name)
                address = self.address(name)
                return psycopg.connect(address.conninfo(), autocommit=True, connect_timeout=30)
        except psycopg.OperationalError as exc:
            raise ServerError(
                f"cannot connect to Lakebase branch {name} at {address.display_url()}: "
                f"{address.redact(str(exc)).strip()}"
            ) from None

    def _write_tag(self, name: str, tag: Tag) -> None:
        with self._connect(name) as conn:
            dbname = conn.execute("SELECT current_database()").fetchone()
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(dbname[0] if dbname else self._settings.lakebase_database),
                    sql.Literal(tag.dumps()),
                )
            )
        with self._mutex:
            self._tags[name] = tag

    def _read_tag(self, name: str) -> Tag | None:
        try:
            with self._connect(name) as conn:
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = current_database()"
                ).fetchone()
        except (DbBranchError, LookupError):
            return None
        tag = Tag.loads(row[0] if row else None)
        if tag is not None:
            with self._mutex:
                self._tags[name] = tag
        return tag


def _message(exc: BaseException) -> str:
    """The service's own words, without the SDK's appended client configuration dump."""
    return str(exc).split(". Config: ", 1)[0]


def _backoff(attempt: int) -> None:
    """Exponential with full jitter, so workers that were refused together do not return together."""
    time.sleep(random.uniform(0, min(5.0, 0.2 * 2**attempt)))


def _seconds(stamp: Any) -> float | None:
    try:
        return float(stamp.ToSeconds()) if stamp is not None else None
    except (AttributeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
