"""Handlers for a branch's endpoints and the database credentials issued for them."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from .core import EmulatorCore, Request
from .state import READ_ONLY, READ_WRITE, RESOURCE_ID, Credential, Endpoint
from .views import endpoint_json
from .wire import ApiError, format_time, now, parse_api_duration, parse_time

CREDENTIAL_TTL_RANGE = (timedelta(seconds=300), timedelta(seconds=3600))
_ENDPOINT_NAME = re.compile(r"^projects/([^/]+)/branches/([^/]+)/endpoints/([^/]+)$")


def list_endpoints(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        _project, branch = core.lookup_branch(*request.params)
        return {"endpoints": [endpoint_json(branch, e) for e in branch.endpoints.values()]}


def get_endpoint(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        branch, endpoint = core.lookup_endpoint(*request.params)
        return endpoint_json(branch, endpoint)


def create_endpoint(core: EmulatorCore, request: Request) -> dict[str, Any]:
    project_id, branch_id = request.params
    endpoint_id = request.query.get("endpoint_id", "")
    if not RESOURCE_ID.match(endpoint_id):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"endpoint_id {endpoint_id!r} is not a valid resource id"
        )
    spec = request.body.get("spec")
    if not isinstance(spec, dict) or spec.get("endpoint_type") not in (READ_WRITE, READ_ONLY):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"spec.endpoint_type must be {READ_WRITE} or {READ_ONLY}"
        )
    replace = request.query.get("replace_existing") == "true"
    with core.lock:
        project, branch = core.lookup_branch(project_id, branch_id)
        if branch.deleting is not None:
            raise ApiError(400, "FAILED_PRECONDITION", f"{branch.name} is being deleted")
        existing = branch.endpoints.get(endpoint_id)
        if existing is not None and not replace:
            raise ApiError(
                409, "ALREADY_EXISTS", f"Endpoint {branch.name}/endpoints/{endpoint_id} already exists"
            )
        if spec["endpoint_type"] == READ_WRITE and any(
            e.spec.get("endpoint_type") == READ_WRITE and e is not existing for e in branch.endpoints.values()
        ):
            raise ApiError(409, "ALREADY_EXISTS", f"{branch.name} already has a read-write endpoint")
        op = core.new_operation(project, "create_endpoint")
        created = now()
        if existing is not None:
            previous = existing.spec
            endpoint = existing
            endpoint.spec, endpoint.updated = dict(spec), created

            def rollback() -> None:
                endpoint.spec = previous

        else:
            endpoint = Endpoint(endpoint_id, "ep-" + secrets.token_hex(8), created, created, dict(spec))
            branch.endpoints[endpoint_id] = endpoint

            def rollback() -> None:
                branch.endpoints.pop(endpoint_id, None)

    def work() -> Callable[[], dict[str, Any]]:
        def commit() -> dict[str, Any]:
            endpoint.updated = now()
            core.bring_up(branch, endpoint)
            return endpoint_json(branch, endpoint)

        return commit

    core.run_operation(op, work, rollback, request.fault)
    return op.as_json()


def delete_endpoint(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        project = core.lookup_project(request.params[0])
        branch, endpoint = core.lookup_endpoint(*request.params)
        if branch.protected:
            raise ApiError(
                400,
                "FAILED_PRECONDITION",
                f"the computes of protected branch {branch.name} cannot be deleted",
            )
        op = core.new_operation(project, "delete_endpoint")

    def work() -> Callable[[], dict[str, Any]]:
        def commit() -> dict[str, Any]:
            core.shut_down(branch, endpoint)
            branch.endpoints.pop(endpoint.endpoint_id, None)
            return {}

        return commit

    core.run_operation(op, work, lambda: None, request.fault)
    return op.as_json()


def generate_credential(core: EmulatorCore, request: Request) -> dict[str, Any]:
    endpoint_name = request.body.get("endpoint")
    match = _ENDPOINT_NAME.match(endpoint_name) if isinstance(endpoint_name, str) else None
    if match is None:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            "endpoint must be projects/{project}/branches/{branch}/endpoints/{endpoint}, "
            f"got {endpoint_name!r}",
        )
    issued = now()
    lifetime = timedelta(seconds=core.behaviour.credential_lifetime)
    if request.body.get("ttl") is not None:
        lifetime = parse_api_duration(request.body["ttl"], "ttl")
    elif request.body.get("expire_time") is not None:
        lifetime = parse_time(request.body["expire_time"], "expire_time") - issued
    if ("ttl" in request.body or "expire_time" in request.body) and not (
        CREDENTIAL_TTL_RANGE[0] - timedelta(seconds=1) <= lifetime <= CREDENTIAL_TTL_RANGE[1]
    ):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "a credential must live between 300s and 3600s")
    project_id, branch_id, endpoint_id = match.groups()
    with core.lock:
        core.lookup_endpoint(project_id, branch_id, endpoint_id)
        token = secrets.token_urlsafe(32)
        expires = issued + lifetime
        core.credentials[token] = Credential(project_id, request.identity, (branch_id, endpoint_id), expires)
    return {"token": token, "expire_time": format_time(expires)}
