"""The JSON the SDK gets back for each resource, shaped like the real service's answers."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from .state import DATABASE_ID, POSTGRES_DATABASE, Branch, Endpoint, Project
from .wire import format_time

#: How long a soft-deleted branch could be undeleted (shown as purge_time, not enforced).
SOFT_DELETE_RETENTION = timedelta(days=7)


def project_json(project: Project, owner: str, pg_version: int) -> dict[str, Any]:
    return {
        "name": project.name,
        "project_id": project.project_id,
        "uid": project.uid,
        "create_time": format_time(project.created),
        "update_time": format_time(project.created),
        "spec": {"display_name": project.project_id, "pg_version": pg_version},
        "status": {
            "default_branch": f"{project.name}/branches/{project.default_branch}",
            "display_name": project.project_id,
            "owner": owner,
            "pg_version": pg_version,
        },
    }


def branch_json(branch: Branch) -> dict[str, Any]:
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
    if branch.deleted_at is not None:
        status["delete_time"] = format_time(branch.deleted_at)
        status["purge_time"] = format_time(branch.deleted_at + SOFT_DELETE_RETENTION)
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


def endpoint_json(branch: Branch, endpoint: Endpoint) -> dict[str, Any]:
    spec = json.loads(json.dumps(endpoint.spec))
    status: dict[str, Any] = {
        "endpoint_id": endpoint.endpoint_id,
        "endpoint_type": spec.get("endpoint_type"),
        "current_state": endpoint.state,
    }
    if endpoint.host is not None:
        # No host until the compute is up: clients must wait for it, as on the service.
        status["hosts"] = {"host": endpoint.host}
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


def database_json(branch: Branch, role: str) -> dict[str, Any]:
    return {
        "name": f"{branch.name}/databases/{DATABASE_ID}",
        "parent": branch.name,
        "database_id": DATABASE_ID,
        "create_time": format_time(branch.created),
        "update_time": format_time(branch.created),
        "status": {
            "database_id": DATABASE_ID,
            "postgres_database": POSTGRES_DATABASE,
            "role": role,
        },
    }
