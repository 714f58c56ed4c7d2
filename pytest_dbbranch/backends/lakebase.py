"""Lakebase: the project, its credentials, and the marks the plugin leaves on its branches.

On Lakebase the plugin forks few Lakebase branches and many databases: one branch for the
run, forked from a branch that holds the fingerprint's sealed templates, and inside it the
per-test databases of the PostgreSQL backend (``CREATE DATABASE ... TEMPLATE``), which cost
no API call. This module is what that needs from the service: who we are, how to reach a
branch with a credential valid *now*, and where our marks go. The REST calls themselves
(retries, polling, error classes) are ``lakebase_api``'s.

Marks live only in what the CI identity owns: the ``dbbranch`` database it creates on each
of its branches carries the mark as its comment. ``databricks_postgres`` belongs to the
project owner, and PostgreSQL lets only an owner comment on a database.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..conninfo import ServerAddress
from ..errors import ConfigError, ServerError

if TYPE_CHECKING:
    import psycopg

    from .lakebase_api import LakebaseApi

PRODUCT = "pytest-dbbranch"
#: The database the plugin creates (and so owns) on each of its branches, to carry its mark.
MARK_DATABASE = "dbbranch"
MARK_TOOL = "pytest-dbbranch/lakebase"
#: How long a compute may take to wake from scale-to-zero, or a new one to start.
WAKE_SECONDS = 60.0

log = logging.getLogger("pytest_dbbranch")


@dataclass(frozen=True)
class LakebaseConfig:
    """What the Lakebase side needs to know, apart from the plugin's settings format."""

    project: str
    profile: str | None = None
    port: int = 5432
    sslmode: str = "require"
    #: The database of the source branch that holds the data (the templates copy it).
    database: str = "databricks_postgres"
    #: Seconds: the run's branch expires this long after the last heartbeat.
    run_ttl: int = 3600
    #: Seconds: a test's own Lakebase branch (isolation lakebase_branch) expires after this.
    test_ttl: int = 900
    #: Seconds: the oldest copy of a moving source a run may still fork.
    template_max_age: int = 7 * 86400
    #: RFC 3339 time to read the source at, instead of its current state.
    source_time: str | None = None
    #: Unarchived branches the project allows.
    limit: int = 10
    timeout: float = 600.0


Role = Literal["template-branch", "run", "test"]


@dataclass(frozen=True)
class LakebaseMark:
    """Says which of our Lakebase branches this is. ``ready`` is the completion marker of a
    template branch; ``point`` records where in the source's history it was forked."""

    role: Role
    run: str
    key: str = ""
    #: Template branches of one project's migrations and source share it, whatever their
    #: fingerprint: a newer ready one replaces the older ones.
    group: str = ""
    ready: bool = False
    point: str = ""
    created: float = field(default_factory=time.time)
    tool: str = MARK_TOOL

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> LakebaseMark | None:
        try:
            data: Any = json.loads(text or "")
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("tool") != MARK_TOOL:
            return None
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return None


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


class LakebaseProject:
    """One project as one identity sees it: its API, its endpoints and a credential cache
    shared by every connection of this process."""

    def __init__(self, config: LakebaseConfig, *, client: Any = None, api: LakebaseApi | None = None) -> None:
        from .lakebase_api import LakebaseApi

        self.config = config
        self.client = client if client is not None else make_client(config.profile)
        self.api = api if api is not None else LakebaseApi(self.client, config.project)
        self.name = self.api.project
        info = self.api.project_info()
        self.default_branch: str = info.default_branch
        self.server_version: int = info.pg_version
        try:
            me = self.client.current_user.me()
        except Exception as exc:
            raise ServerError(f"Lakebase: cannot identify the current user: {_short(exc)}") from None
        #: The PostgreSQL role of this identity on every branch (its e-mail or application id).
        self.user: str = me.user_name or ""
        host = getattr(self.client.config, "host", "") or ""
        self.server_key = f"lakebase:{host}:{self.name}"
        self._mutex = threading.Lock()
        self._tokens: dict[str, tuple[str, float, float]] = {}

    def branch_id(self, name: str) -> str:
        return name.rsplit("/", 1)[-1]

    def full(self, branch: str) -> str:
        return branch if branch.startswith("projects/") else f"{self.name}/branches/{branch}"

    def address(self, branch: str, dbname: str | None = None) -> BranchAddress:
        return BranchAddress(self, self.branch_id(branch), dbname or self.config.database)

    def token(self, endpoint: str) -> str:
        """A credential for ``endpoint``, reused while it has a good part of its life left
        (expiry matters only at login; a connection outlives its token)."""
        now = time.time()
        with self._mutex:
            cached = self._tokens.get(endpoint)
        if cached is not None:
            token, issued, expires = cached
            if now < expires - max(1.0, min(300.0, 0.25 * (expires - issued))):
                return token
        credential = self.api.credential(endpoint)
        with self._mutex:
            self._tokens[endpoint] = (credential.token, now, credential.expires_at)
        return str(credential.token)

    def forget(self, endpoint: str) -> None:
        with self._mutex:
            self._tokens.pop(endpoint, None)

    def connect(self, branch: str, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection to ``branch``, retried while its compute starts or wakes from scale-to-
        zero (a new branch's compute starts on the first login)."""
        from .postgres import connect

        deadline = time.monotonic() + WAKE_SECONDS
        delay = 0.2
        while True:
            try:
                return connect(self.address(branch, dbname), **kwargs)
            except ServerError as exc:
                if time.monotonic() + delay > deadline or not _waking(str(exc)):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    # -- marks --------------------------------------------------------------------------

    def write_mark(self, branch: str, mark: LakebaseMark) -> None:
        """Put ``mark`` on ``branch``, in the database this identity creates there."""
        import psycopg
        from psycopg import sql

        with self.connect(branch, autocommit=True) as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(MARK_DATABASE)))
            except psycopg.errors.DuplicateDatabase:
                pass  # inherited from the parent branch: ours too (checked when read)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ServerError(
                    f"Lakebase branch {self.branch_id(branch)}: the role {self.user} may not create a "
                    f"database ({exc.diag.message_primary}); it needs CREATEDB (the "
                    "databricks_superuser role grants it): see the README's Lakebase role prerequisites"
                ) from None
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(MARK_DATABASE), sql.Literal(mark.dumps())
                )
            )

    def read_mark(self, branch: str) -> LakebaseMark | None:
        """Our mark on ``branch``; None when it has none, or when the mark database is not
        this identity's (someone else's branch that happens to have our name)."""
        with self.connect(branch, autocommit=True) as conn:
            row = conn.execute(
                "SELECT shobj_description(d.oid, 'pg_database') FROM pg_database d"
                " WHERE d.datname = %s AND pg_get_userbyid(d.datdba) = current_user",
                (MARK_DATABASE,),
            ).fetchone()
        return LakebaseMark.loads(row[0] if row else None)


class BranchAddress:
    """How to reach one Lakebase branch now: its read-write endpoint's host and a credential
    valid for a login starting now (an ``AddressSource``)."""

    def __init__(self, project: LakebaseProject, branch_id: str, dbname: str) -> None:
        self.project = project
        self.branch_id = branch_id
        self.dbname = dbname

    def current(self) -> ServerAddress:
        endpoint = self.project.api.endpoint(self.branch_id)
        config = self.project.config
        return ServerAddress(
            host=endpoint.host,
            port=endpoint.port or config.port,
            user=self.project.user,
            password=self.project.token(endpoint.name),
            dbname=self.dbname,
            options=(("sslmode", config.sslmode),),
        )

    def refresh(self) -> bool:
        self.project.forget(self.project.api.endpoint(self.branch_id).name)
        return True


def _waking(message: str) -> bool:
    """The failures a starting or waking compute gives (refused, reset, starting up)."""
    lower = message.lower()
    return any(
        text in lower
        for text in (
            "connection refused",
            "the database system is starting up",
            "server closed the connection",
            "connection reset",
            "timeout expired",
            "could not receive data",
        )
    )


def _short(exc: BaseException) -> str:
    """The service's own words, without the SDK's appended client configuration dump."""
    return str(exc).split(". Config: ", 1)[0]
