"""Handlers for branches and the one database each branch shows."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .core import EmulatorCore, Request, fail
from .state import DATABASE_ID, RESOURCE_ID, Branch, primary_endpoint
from .views import branch_json, database_json
from .wire import ApiError, decode_page_token, encode_page_token, now, parse_api_duration, parse_time

MAX_TTL = timedelta(days=30)
_BRANCH_NAME = re.compile(r"^projects/([^/]+)/branches/([^/]+)$")


def list_branches(core: EmulatorCore, request: Request) -> dict[str, Any]:
    size_text = request.query.get("page_size", "")
    try:
        size = int(size_text) if size_text else core.page_size
    except ValueError:
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"page_size must be an integer: {size_text!r}"
        ) from None
    if size < 0:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "page_size cannot be negative")
    size = size or core.page_size
    offset = decode_page_token(request.query.get("page_token", ""))
    with core.lock:
        branches = list(core.lookup_project(request.params[0]).branches.values())
        page = [branch_json(branch) for branch in branches[offset : offset + size]]
    out: dict[str, Any] = {"branches": page}
    if offset + size < len(branches):
        out["next_page_token"] = encode_page_token(offset + size)
    return out


def get_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        _project, branch = core.lookup_branch(*request.params)
        return branch_json(branch)


def create_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
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
    created = now()
    expire_at: datetime | None = None
    if "ttl" in given:
        ttl = parse_api_duration(spec["ttl"], "spec.ttl")
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", "spec.ttl must be more than 0s and at most 30 days"
            )
        expire_at = created + ttl
    elif "expire_time" in given:
        expire_at = parse_time(spec["expire_time"], "spec.expire_time")
        if expire_at <= created:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "spec.expire_time must be in the future")
    if "source_branch_time" in spec:
        parse_time(spec["source_branch_time"], "spec.source_branch_time")
    with core.lock:
        project = core.lookup_project(project_id)
        source_name = spec.get("source_branch") or f"{project.name}/branches/{project.default_branch}"
        match = _BRANCH_NAME.match(str(source_name))
        if match is None or match.group(1) != project_id:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"source_branch {source_name!r} is not a branch of {project.name}",
            )
        _project, parent = core.lookup_branch(project_id, match.group(2))
        if not parent.usable:
            raise ApiError(400, "FAILED_PRECONDITION", f"source branch {parent.name} is not ready")
        if branch_id in project.branches:
            raise ApiError(
                409, "ALREADY_EXISTS", f"Branch {project.name}/branches/{branch_id} already exists"
            )
        op = core.new_operation(project, "create_branch")
        if len(project.branches) >= core.branch_limit:
            message = (
                f"too many branches in project {project.name}: the limit is {core.branch_limit} "
                "(production counts); delete branches first"
            )
            core.run_operation(op, fail("RESOURCE_EXHAUSTED", message), lambda: None, None)
            return op.as_json()
        branch = Branch(
            project_id=project_id,
            branch_id=branch_id,
            uid="br-" + secrets.token_hex(8),
            created=created,
            updated=created,
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
        database = core.databases.new_name(project_id, branch_id)
        core.databases.clone(parent_database, database, core.databases.tag(project_id, branch_id))
        size = core.databases.size(database)

        def commit() -> dict[str, Any]:
            branch.database, branch.size, branch.state = database, size, "READY"
            branch.updated = now()
            if core.auto_endpoint:
                branch.endpoints["primary"] = primary_endpoint(branch.updated)
            return branch_json(branch)

        return commit

    def rollback() -> None:
        project.branches.pop(branch_id, None)

    core.run_operation(op, work, rollback, request.fault)
    return op.as_json()


def delete_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        project, branch = core.lookup_branch(*request.params)
        if branch.deleting is not None:
            return branch.deleting.as_json()
        reason = core.refuse_delete_reason(project, branch)
        if reason is not None:
            raise ApiError(400, "FAILED_PRECONDITION", reason)
        return core.begin_delete(project, branch, request.fault).as_json()


def list_databases(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        _project, branch = core.lookup_branch(*request.params)
        return {"databases": [database_json(branch, core.user_name)]}


def get_database(core: EmulatorCore, request: Request) -> dict[str, Any]:
    project_id, branch_id, database_id = request.params
    with core.lock:
        _project, branch = core.lookup_branch(project_id, branch_id)
        if database_id != DATABASE_ID:
            raise ApiError(404, "NOT_FOUND", f"Database {branch.name}/databases/{database_id} not found")
        return database_json(branch, core.user_name)
