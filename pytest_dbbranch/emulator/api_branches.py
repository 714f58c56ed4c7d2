"""Handlers for branches and the one database each branch shows."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .core import EmulatorCore, Request, fail
from .state import DATABASE_ID, RESOURCE_ID, Branch, Project, primary_endpoint
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
    show_deleted = request.query.get("show_deleted") == "true"
    with core.lock:
        everything = core.lookup_project(request.params[0]).branches.values()
        branches = [b for b in everything if b.live or show_deleted]
        page = [branch_json(branch) for branch in branches[offset : offset + size]]
    out: dict[str, Any] = {"branches": page}
    if offset + size < len(branches):
        out["next_page_token"] = encode_page_token(offset + size)
    return out


def get_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        _project, branch = core.lookup_branch(*request.params)
        return branch_json(branch)


def _expiry(spec: dict[str, Any], created: datetime, *, required: bool) -> tuple[bool, datetime | None]:
    """(whether spec sets the expiration, the moment it expires or None for no_expiry)."""
    given = [key for key in ("ttl", "expire_time") if spec.get(key) is not None]
    given += ["no_expiry"] if spec.get("no_expiry") is True else []
    if len(given) > 1 or (required and not given):
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            "exactly one of spec.ttl, spec.expire_time or spec.no_expiry must be given"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if not given:
        return False, None
    if "ttl" in given:
        ttl = parse_api_duration(spec["ttl"], "spec.ttl")
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", "spec.ttl must be more than 0s and at most 30 days"
            )
        moment = created + ttl  # the SDK documents ttl as relative to the branch's creation
        if moment <= now():
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", "spec.ttl ends before now (ttl counts from create_time)"
            )
        return True, moment
    if "expire_time" in given:
        moment = parse_time(spec["expire_time"], "spec.expire_time")
        if moment <= now():
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "spec.expire_time must be in the future")
        if moment - created > MAX_TTL:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "a branch expires at most 30 days after creation")
        return True, moment
    return True, None


def _check_rules(
    core: EmulatorCore,
    project: Project,
    branch: Branch | None,
    *,
    protected: bool,
    expires: bool,
    default: bool,
) -> None:
    """The documented branch rules: one protected branch per project, protected and default
    branches never expire, and (per ``ttl_with_children``) no expiry on a branch with children."""
    rules = core.behaviour
    if rules.branch_rules:
        if protected and expires:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "a protected branch cannot have an expiration")
        if default and expires:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "the default branch cannot have an expiration")
        others = [b for b in project.branches.values() if b.protected and b.live and b is not branch]
        if protected and others:
            raise ApiError(
                400,
                "FAILED_PRECONDITION",
                f"{project.name} already has a protected branch ({others[0].branch_id}); "
                "a project can have only one",
            )
    if (
        branch is not None
        and expires
        and rules.ttl_with_children != "allow"
        and core.children(project, branch)
    ):
        raise ApiError(
            400, "FAILED_PRECONDITION", f"{branch.name} has child branches and cannot have an expiration"
        )


def _refuse_over_limit(core: EmulatorCore, project: Project) -> str | None:
    if core.live_branches(project) < core.behaviour.branch_limit:
        return None
    message = (
        f"Project {project.name} has reached its limit of {core.behaviour.branch_limit} unarchived "
        "branches (the default branch counts); delete branches first"
    )
    if core.behaviour.limit_error == "request":
        raise ApiError(400, "RESOURCE_EXHAUSTED", message)
    return message


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
        raise ApiError(501, "NOT_IMPLEMENTED", "source_snapshot is not supported by the emulator")
    created = now()
    _given, expire_at = _expiry(spec, created, required=True)
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
        existing = project.branches.get(branch_id)
        if existing is not None:
            deleted = " (soft-deleted: undelete it, or delete it with purge)" if not existing.live else ""
            raise ApiError(
                409, "ALREADY_EXISTS", f"Branch {project.name}/branches/{branch_id} already exists{deleted}"
            )
        protected = bool(spec.get("is_protected"))
        _check_rules(core, project, None, protected=protected, expires=expire_at is not None, default=False)
        if core.behaviour.ttl_with_children == "refuse-child" and parent.expire_at is not None:
            raise ApiError(
                400,
                "FAILED_PRECONDITION",
                f"source branch {parent.name} has an expiration; a branch with an expiration "
                "cannot have child branches",
            )
        op = core.new_operation(project, "create_branch")
        over = _refuse_over_limit(core, project)
        if over is not None:
            core.run_operation(op, fail("RESOURCE_EXHAUSTED", over), lambda: None, None)
            return op.as_json()
        branch = Branch(
            project_id=project_id,
            branch_id=branch_id,
            uid="br-" + secrets.token_hex(8),
            created=created,
            updated=created,
            spec=dict(spec),
            default=False,
            protected=protected,
            expire_at=expire_at,
            source_branch=parent.name,
        )
        project.branches[branch_id] = branch
        parent_handle = parent.handle
        assert parent_handle is not None

    def work() -> Callable[[], dict[str, Any]]:
        handle = core.storage.fork(parent_handle, project_id, branch_id)
        size = core.storage.size(handle)

        def commit() -> dict[str, Any]:
            branch.handle, branch.size, branch.state = handle, size, "READY"
            branch.updated = now()
            if core.behaviour.auto_endpoint:
                endpoint = primary_endpoint(branch.updated)
                branch.endpoints["primary"] = endpoint
                core.bring_up(branch, endpoint)
            return branch_json(branch)

        return commit

    def rollback() -> None:
        project.branches.pop(branch_id, None)

    core.run_operation(op, work, rollback, request.fault)
    return op.as_json()


def delete_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    purge = request.query.get("purge") == "true" or not core.behaviour.soft_delete
    with core.lock:
        project, branch = core.lookup_branch(*request.params, deleted=purge)
        if branch.deleting is not None:
            return branch.deleting.as_json()
        reason = None if branch.deleted_at is not None else core.refuse_delete_reason(project, branch)
        if reason is not None:
            raise ApiError(400, "FAILED_PRECONDITION", reason)
        return core.begin_delete(project, branch, request.fault, purge=purge).as_json()


def _snake(path: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), path)


_UPDATABLE = {"spec.ttl", "spec.expire_time", "spec.no_expiry", "spec.expiration", "spec.is_protected"}


def update_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    """PATCH with an update mask: the expiration (``spec.expiration`` or one of its fields)
    and ``spec.is_protected``; anything else is refused rather than silently ignored."""
    # FieldMask's JSON form is lowerCamelCase ("spec.isProtected"); both spellings are accepted.
    mask = [
        _snake(field.strip()) for field in request.query.get("update_mask", "").split(",") if field.strip()
    ]
    if not mask:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "update_mask is required")
    unknown = [field for field in mask if field not in _UPDATABLE]
    if unknown:
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"update_mask field(s) not updatable: {', '.join(unknown)}"
        )
    body_spec = request.body.get("spec") or {}
    if not isinstance(body_spec, dict):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "spec must be an object")
    expiry_fields = [f.removeprefix("spec.") for f in mask if f != "spec.is_protected"]
    with core.lock:
        project, branch = core.lookup_branch(*request.params)
        if not branch.usable:
            raise ApiError(400, "FAILED_PRECONDITION", f"{branch.name} is not ready")
        new_spec = dict(branch.spec)
        expire_at = branch.expire_at
        if expiry_fields:
            wanted = (
                {"ttl", "expire_time", "no_expiry"} if "expiration" in expiry_fields else set(expiry_fields)
            )
            chosen = {k: body_spec[k] for k in wanted if body_spec.get(k) is not None}
            _set, expire_at = _expiry(chosen, branch.created, required=True)
            for key in ("ttl", "expire_time", "no_expiry"):
                new_spec.pop(key, None)
            new_spec.update(chosen)
        protected = branch.protected
        if "spec.is_protected" in mask:
            protected = bool(body_spec.get("is_protected"))
            new_spec["is_protected"] = protected
        adds_expiry = expire_at is not None and (expiry_fields != [] or protected)
        _check_rules(core, project, branch, protected=protected, expires=adds_expiry, default=branch.default)
        op = core.new_operation(project, "update_branch")

    def work() -> Callable[[], dict[str, Any]]:
        def commit() -> dict[str, Any]:
            branch.spec, branch.expire_at, branch.protected = new_spec, expire_at, protected
            branch.updated = now()
            return branch_json(branch)

        return commit

    core.run_operation(op, work, lambda: None, request.fault)
    return op.as_json()


def undelete_branch(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        project, branch = core.lookup_branch(*request.params, deleted=True)
        if branch.deleted_at is None:
            raise ApiError(400, "FAILED_PRECONDITION", f"{branch.name} is not deleted")
        if branch.deleting is not None:
            raise ApiError(400, "FAILED_PRECONDITION", f"{branch.name} is being purged")
        _refuse_over_limit(core, project)
        op = core.new_operation(project, "undelete_branch")
        handle = branch.handle

    def work() -> Callable[[], dict[str, Any]]:
        if handle is not None:
            core.storage.resume(handle)

        def commit() -> dict[str, Any]:
            branch.deleted_at, branch.state, branch.updated = None, "READY", now()
            for endpoint in branch.endpoints.values():
                core.bring_up(branch, endpoint)
            return branch_json(branch)

        return commit

    core.run_operation(op, work, lambda: None, request.fault)
    return op.as_json()


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
