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
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from .. import names
from ..conninfo import ServerAddress
from ..errors import (
    BranchExistsError,
    ConfigError,
    DbBranchError,
    LakebaseOperationError,
    NotOursError,
    ServerError,
    SourceError,
)
from .base import Backend, BranchRecord, Tag, connect
from .budget import BranchBudget
from .postgres import PostgresBackend

T = TypeVar("T")

PRODUCT = "pytest-dbbranch"
OPERATION_TIMEOUT = 600.0
RETRY_BUDGET = 300.0


@dataclass(frozen=True)
class LakebaseConfig:
    """What the backend needs to know, apart from the plugin's settings format."""

    project: str
    profile: str | None = None
    #: Seconds: test branches expire on their own after this; templates after the second.
    ttl: int = 3600
    template_ttl: int = 7 * 86400
    #: RFC 3339 time to branch the source at, instead of its current state.
    source_time: str | None = None
    budget: int = 6
    port: int = 5432
    sslmode: str = "require"
    database: str = "databricks_postgres"


_TOKEN_FIELD = re.compile(r"""(["']?(?:token|access_token|password)["']?\s*[:=]\s*["'])[^"']+(["'])""", re.I)


class _RedactTokens(logging.Filter):
    """databricks-sdk logs every response body at DEBUG, database credentials included: a
    run's log file must not hold them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_FIELD.sub(r"\1**REDACTED**\2", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _redact_sdk_logs() -> None:
    logger = logging.getLogger("databricks.sdk")
    if not any(isinstance(existing, _RedactTokens) for existing in logger.filters):
        logger.addFilter(_RedactTokens())


def make_client(profile: str | None) -> Any:
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

    _redact_sdk_logs()
    try:
        config = Config(
            profile=profile,
            product=PRODUCT,
            product_version=__version__,
            retry_timeout_seconds=60,
            http_timeout_seconds=60,
        )
    except ValueError as exc:
        raise ConfigError(f"Databricks authentication is not configured: {exc}") from None
    return WorkspaceClient(config=config)


class _NotFound(Exception):
    """The API said 404 for the object of one call (never raised to users)."""


class LakebaseBackend:
    """Branches of one Lakebase project, as the plugin's ``Backend``."""

    kind = "lakebase"
    has_global_lock = False
    warm_pool = False
    branches_are_servers = True
    restores_dumps = False
    #: Listing means a login to every branch to read its tag.
    cheap_listing = False
    #: No lock is shared by every branch of a project: liveness falls back to host and pid.
    knows_liveness = False

    def __init__(self, config: LakebaseConfig, *, lock_root: Path, client: Any = None) -> None:
        from databricks.sdk import errors

        self._errors = errors
        self._config = config
        self.project = f"projects/{config.project.removeprefix('projects/')}"
        self.client = client if client is not None else make_client(config.profile)
        try:
            project = self._api("read the project", lambda: self.client.postgres.get_project(self.project))
        except _NotFound:
            raise ConfigError(
                f"Lakebase project {self.project} not found (dbbranch_lakebase_project); "
                "check the project id and the workspace"
            ) from None
        status = project.status
        self.default_branch: str = (status.default_branch if status else None) or (
            f"{self.project}/branches/production"
        )
        self.server_version: int = int((status.pg_version if status else None) or 0)
        self.server_key = f"lakebase:{self.client.config.host}:{self.project}"
        self.lock_folder = lock_root / names.short_hash(self.server_key, 10)
        self.lock_folder.mkdir(parents=True, exist_ok=True)
        me = self._api("identify the current user", self.client.current_user.me)
        self.user: str = me.user_name or ""
        self.role = self.user
        self.timeout = OPERATION_TIMEOUT
        self._mutex = threading.RLock()
        self._tags: dict[str, Tag] = {}
        self._endpoints: dict[str, tuple[str, str]] = {}
        self._credentials: dict[str, tuple[str, float, float]] = {}
        self.budget = BranchBudget(self.lock_folder / "budget", config.budget)
        #: Never deleted: the source branch (the default branch unless a source is named).
        self.source_branch = self.default_branch

    # -- protocol ---------------------------------------------------------------------------

    @property
    def empty_parent(self) -> str:
        """Lakebase has no empty branch to start from: the project's default branch is it."""
        return self.default_branch

    @property
    def source_point(self) -> str:
        return f"@{self._config.source_time or 'now'}"

    def find_source(self, location: str, where: str) -> str:
        """On Lakebase the source is a branch of the project."""
        branch = self.full(location)
        try:
            self._api("read the source branch", lambda: self.client.postgres.get_branch(branch))
        except _NotFound:
            raise SourceError(f"{where}: source branch {branch} does not exist") from None
        self.source_branch = branch
        return branch

    def nested(self, name: str) -> tuple[Backend, str]:
        inner = PostgresBackend(self.address(name), lock_folder=self.lock_folder / name)
        return inner, inner.current_database()

    def sibling(self) -> Backend:
        raise NotImplementedError("no warm pool on Lakebase: branches are budgeted and cost money")

    def rename(self, old: str, new: str) -> None:
        raise NotImplementedError("Lakebase branches are never renamed by the plugin")

    def hold(self, key: str) -> None:
        """Nothing to hold: see ``knows_liveness``."""

    def is_held(self, key: str) -> bool:
        return False

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Always: with no lock shared by the project's branches nothing can be known in use,
        and a run whose template went rebuilds it once (``ParentMissingError``)."""
        yield True

    def list_untagged(self) -> list[str]:
        return []

    def drop_untagged(self, name: str) -> None:
        raise NotOursError(f"refusing to delete Lakebase branch {self.full(name)} without our tag")

    def fork(self, name: str, parent: str, tag: Tag) -> None:
        from databricks.sdk.service.postgres import BranchSpec
        from google.protobuf.duration_pb2 import Duration
        from google.protobuf.timestamp_pb2 import Timestamp

        source = self.full(parent)
        ttl = self._config.template_ttl if tag.kind == "template" else self._config.ttl
        spec = BranchSpec(source_branch=source, ttl=Duration(seconds=ttl))
        if self._config.source_time and source == self.source_branch:
            stamp = Timestamp()
            stamp.FromJsonString(self._config.source_time)
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
        return _record(name, tag, branch)

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def list_ours(self) -> list[BranchRecord]:
        records = []
        for branch in self._api(
            "list branches", lambda: list(self.client.postgres.list_branches(self.project))
        ):
            branch_id = (branch.name or "").rsplit("/", 1)[-1]
            if not names.is_ours(branch_id) or self._is_guarded(branch):
                continue
            tag = self._tags.get(branch_id) or self._read_tag(branch_id)
            if tag is not None:
                records.append(_record(branch_id, tag, branch))
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
            port=self._config.port,
            user=self.user,
            password=self._credential(endpoint),
            dbname=self._config.database,
            options=(("sslmode", self._config.sslmode),),
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
            return self._api("read a branch", lambda: self.client.postgres.get_branch(self.full(name)))
        except _NotFound:
            return None

    def _create(self, name: str, spec: Any) -> None:
        from databricks.sdk.service.postgres import Branch

        deadline = time.monotonic() + RETRY_BUDGET
        attempt = 0
        while True:
            try:
                operation = self._api(
                    f"create branch {name}",
                    lambda: self.client.postgres.create_branch(
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
                f"delete branch {name}", lambda: self.client.postgres.delete_branch(self.full(name))
            )
        except _NotFound:
            return
        try:
            self._wait(operation.name(), f"delete branch {name}")
        except LakebaseOperationError as exc:
            if exc.code not in ("NOT_FOUND", "RESOURCE_DOES_NOT_EXIST"):
                raise
        with self._mutex:
            self._tags.pop(name, None)
            self._endpoints.pop(name, None)

    def _wait(self, operation_name: str, what: str, timeout: float = OPERATION_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            operation = self._api(f"poll {what}", lambda: self.client.postgres.get_operation(operation_name))
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
                raise _NotFound(what) from None
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
            cached = self._endpoints.get(name)
        if cached:
            return cached
        from databricks.sdk.service.postgres import Endpoint, EndpointSpec, EndpointType
        from google.protobuf.duration_pb2 import Duration

        branch = self.full(name)
        endpoint = None
        for candidate in self._api(
            "list endpoints", lambda: list(self.client.postgres.list_endpoints(branch))
        ):
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
                    lambda: self.client.postgres.create_endpoint(
                        parent=branch, endpoint=Endpoint(spec=spec), endpoint_id="primary"
                    ),
                    conflict=True,
                )
                self._wait(operation.name(), f"create an endpoint for {name}")
            except BranchExistsError:
                pass  # created concurrently (another worker, or implicitly by the service)
            endpoint = self._api(
                "read the endpoint", lambda: self.client.postgres.get_endpoint(f"{branch}/endpoints/primary")
            )
        host = endpoint.status.hosts.host if endpoint.status and endpoint.status.hosts else None
        if not host:
            raise DbBranchError(f"Lakebase endpoint {endpoint.name} has no host yet")
        result = (host, endpoint.name)
        with self._mutex:
            self._endpoints[name] = result
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
            lambda: self.client.postgres.generate_database_credential(endpoint=endpoint),
        )
        expires_at = credential.expire_time.ToSeconds() if credential.expire_time else now + 3600
        with self._mutex:
            self._credentials[endpoint] = (credential.token, now, float(expires_at))
        return str(credential.token)

    def refresh_credentials(self, name: str) -> bool:
        """Drop the cached token of ``name``'s endpoint (it was refused at login)."""
        with self._mutex:
            cached = self._endpoints.get(name)
            if cached is not None:
                self._credentials.pop(cached[1], None)
        return True

    def _connect(self, name: str) -> psycopg.Connection[Any]:
        try:
            return connect(self, name, autocommit=True, connect_timeout=30)
        except psycopg.OperationalError as exc:
            address = self.address(name)
            raise ServerError(
                f"cannot connect to Lakebase branch {name} at {address.display_url()}: "
                f"{address.redact(str(exc)).strip()}"
            ) from None

    def _write_tag(self, name: str, tag: Tag) -> None:
        with self._connect(name) as conn:
            dbname = conn.execute("SELECT current_database()").fetchone()
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(dbname[0] if dbname else self._config.database),
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
        except (DbBranchError, _NotFound):
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


def _record(name: str, tag: Tag, branch: Any) -> BranchRecord:
    """Our record of an SDK branch; a sealed template takes no connections by convention."""
    return BranchRecord(
        name=name,
        tag=tag,
        allows_connections=not tag.ready,
        size_bytes=_int(getattr(branch.status, "logical_size_bytes", None)),
        expires_at=_seconds(getattr(branch.status, "expire_time", None)),
    )
