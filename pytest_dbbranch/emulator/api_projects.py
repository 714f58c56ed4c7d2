"""Handlers for who the caller is, the projects, and the operations a client polls."""

from __future__ import annotations

import zlib
from typing import Any

from .core import EmulatorCore, Request
from .views import project_json
from .wire import ApiError


def host_metadata(core: EmulatorCore, request: Request) -> dict[str, Any]:
    return {}


def me(core: EmulatorCore, request: Request) -> dict[str, Any]:
    name = request.identity or core.user_name
    return {
        "id": str(zlib.crc32(name.encode("utf-8"))),
        "userName": name,
        "displayName": name.split("@", 1)[0],
        "active": True,
        "emails": [{"value": name, "primary": True, "type": "work"}],
    }


def list_projects(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        return {
            "projects": [project_json(p, core.user_name, core.pg_version) for p in core.projects.values()]
        }


def get_project(core: EmulatorCore, request: Request) -> dict[str, Any]:
    with core.lock:
        return project_json(core.lookup_project(request.params[0]), core.user_name, core.pg_version)


def get_operation(core: EmulatorCore, request: Request) -> dict[str, Any]:
    project_id, operation_id = request.params
    with core.lock:
        op = core.lookup_project(project_id).operations.get(operation_id)
        if op is None:
            raise ApiError(
                404, "NOT_FOUND", f"Operation projects/{project_id}/operations/{operation_id} not found"
            )
        return op.as_json()
