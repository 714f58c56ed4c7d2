"""What the Lakebase API tells about a project, a branch, an endpoint and a credential, as
plain records: the rest of the plugin never touches the SDK's classes (which change between
SDK versions) or protobuf timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProjectInfo:
    name: str
    default_branch: str
    pg_version: int


@dataclass(frozen=True)
class BranchInfo:
    id: str
    name: str
    state: str | None
    create_time: float | None
    expire_time: float | None
    is_protected: bool
    is_default: bool
    source_branch: str | None
    source_branch_lsn: str | None
    source_branch_time: float | None

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    host: str
    #: None: the service's default (5432). Set only when the service names one in the host.
    port: int | None
    state: str | None = None


@dataclass(frozen=True)
class Credential:
    token: str = field(repr=False)
    expires_at: float


def enum_text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def seconds(stamp: Any) -> float | None:
    if stamp is None:
        return None
    try:
        return float(stamp.seconds) + float(stamp.nanos) / 1e9
    except AttributeError:
        return None


def branch_info(branch: Any) -> BranchInfo:
    status = branch.status
    name = branch.name or ""

    def get(attribute: str) -> Any:
        return getattr(status, attribute, None) if status is not None else None

    return BranchInfo(
        id=branch.branch_id or name.rsplit("/", 1)[-1],
        name=name,
        state=enum_text(get("current_state")),
        create_time=seconds(branch.create_time),
        expire_time=seconds(get("expire_time")),
        is_protected=bool(get("is_protected")),
        is_default=bool(get("default")),
        source_branch=get("source_branch"),
        source_branch_lsn=get("source_branch_lsn"),
        source_branch_time=seconds(get("source_branch_time")),
    )


def endpoint_info(name: str, host: str, state: str | None) -> EndpointInfo:
    """A host given as ``host:port`` (some emulators) names its port; the service's never does."""
    base, sep, port = host.rpartition(":")
    if sep and port.isdigit() and base and not base.endswith(":"):
        return EndpointInfo(name, base, int(port), state)
    return EndpointInfo(name, host, None, state)
