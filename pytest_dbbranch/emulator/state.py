"""What the emulator remembers: projects, branches, endpoints, operations, credentials, faults.

Plain records with no behaviour beyond their own invariants; every read or write happens under
the emulator's one lock (see ``core.EmulatorCore``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DEFAULT_BRANCH = "production"
POSTGRES_DATABASE = "databricks_postgres"
DATABASE_ID = "databricks-postgres"
READ_WRITE = "ENDPOINT_TYPE_READ_WRITE"
READ_ONLY = "ENDPOINT_TYPE_READ_ONLY"
RESOURCE_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
OPERATION_KINDS = frozenset(
    {
        "create_branch",
        "delete_branch",
        "update_branch",
        "undelete_branch",
        "create_endpoint",
        "delete_endpoint",
    }
)


@dataclass
class Fault:
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
        return not (self.operation_error and self.status is None and kind not in OPERATION_KINDS)


@dataclass
class Operation:
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
class Endpoint:
    endpoint_id: str
    uid: str
    created: datetime
    updated: datetime
    spec: dict[str, Any]
    state: str = "INIT"
    #: Where clients reach it (127.0.0.N, or 127.0.0.1 with the single port); None while starting.
    host: str | None = None
    port: int = 0
    #: Set when a login or a session last kept the compute busy (monotonic clock).
    last_active: float = 0.0


@dataclass
class Branch:
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
    #: The storage's name for the branch's data (a cluster, or a backing database).
    handle: str | None = None
    state: str = "INIT"
    size: int = 0
    deleting: Operation | None = None
    deleted_at: datetime | None = None
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}/branches/{self.branch_id}"

    @property
    def usable(self) -> bool:
        return self.state == "READY" and self.deleting is None and self.deleted_at is None

    @property
    def live(self) -> bool:
        """Counts against the branch limit and as somebody's child: not soft-deleted."""
        return self.deleted_at is None


@dataclass
class Project:
    project_id: str
    uid: str
    created: datetime
    default_branch: str = DEFAULT_BRANCH
    branches: dict[str, Branch] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}"


@dataclass
class Credential:
    """A database token: good for the project's endpoints, for one identity, until ``expires``.

    ``endpoint`` (the one it was asked for) only routes sessions that arrive on the single
    shared port without naming an endpoint."""

    project_id: str
    identity: str
    endpoint: tuple[str, str]
    expires: datetime


def primary_endpoint(now: datetime) -> Endpoint:
    spec = {
        "endpoint_type": READ_WRITE,
        "autoscaling_limit_min_cu": 0.5,
        "autoscaling_limit_max_cu": 1.0,
        "suspend_timeout_duration": "300s",
    }
    return Endpoint("primary", "ep-" + secrets.token_hex(8), now, now, spec)
