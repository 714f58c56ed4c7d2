"""The REST API's front: which handler a path goes to, the PAT check, and injected faults.

Faults are acted out here, before any handler runs, because throttling and hang-ups happen in
front of the real service too; a fault meant for an operation travels on to its handler.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import api_branches, api_endpoints, api_projects
from .core import EmulatorCore, Request
from .http import Reply
from .state import Fault
from .wire import ApiError, format_retry_after, json_body

logger = logging.getLogger(__name__)

Handler = Callable[[EmulatorCore, Request], dict[str, Any]]

_PROJECT = "/api/2.0/postgres/projects/*"
_BRANCH = _PROJECT + "/branches/*"
_ROUTE_TABLE: list[tuple[str, str, str, Handler]] = [
    ("GET", "/.well-known/databricks-config", "host_metadata", api_projects.host_metadata),
    ("GET", "/api/2.0/preview/scim/v2/Me", "me", api_projects.me),
    (
        "POST",
        "/api/2.0/postgres/credentials",
        "generate_database_credential",
        api_endpoints.generate_credential,
    ),
    ("GET", "/api/2.0/postgres/projects", "list_projects", api_projects.list_projects),
    ("GET", _PROJECT, "get_project", api_projects.get_project),
    ("GET", _PROJECT + "/operations/*", "get_operation", api_projects.get_operation),
    ("GET", _PROJECT + "/branches", "list_branches", api_branches.list_branches),
    ("POST", _PROJECT + "/branches", "create_branch", api_branches.create_branch),
    ("GET", _BRANCH, "get_branch", api_branches.get_branch),
    ("DELETE", _BRANCH, "delete_branch", api_branches.delete_branch),
    ("PATCH", _BRANCH, "update_branch", api_branches.update_branch),
    ("POST", _BRANCH + "/undelete", "undelete_branch", api_branches.undelete_branch),
    ("GET", _BRANCH + "/endpoints", "list_endpoints", api_endpoints.list_endpoints),
    ("POST", _BRANCH + "/endpoints", "create_endpoint", api_endpoints.create_endpoint),
    ("GET", _BRANCH + "/endpoints/*", "get_endpoint", api_endpoints.get_endpoint),
    ("DELETE", _BRANCH + "/endpoints/*", "delete_endpoint", api_endpoints.delete_endpoint),
    ("GET", _BRANCH + "/databases", "list_databases", api_branches.list_databases),
    ("GET", _BRANCH + "/databases/*", "get_database", api_branches.get_database),
]
# "*" is one path segment; SDK names are interpolated into paths unescaped, so segments never hold "/".
_ROUTES = [
    (method, re.compile("^" + re.escape(template).replace(r"\*", "([^/]+)") + "$"), kind, handler)
    for method, template, kind, handler in _ROUTE_TABLE
]


def _route(method: str, path: str) -> tuple[str, Handler, tuple[str, ...]] | None:
    for route_method, pattern, kind, handler in _ROUTES:
        if route_method == method:
            match = pattern.match(path)
            if match is not None:
                return kind, handler, match.groups()
    return None


def dispatch(core: EmulatorCore, method: str, target: str, headers: Any, raw_body: bytes) -> Reply:
    parts = urlsplit(target)
    path = parts.path.rstrip("/") or "/"
    route = _route(method, path)
    kind = route[0] if route else "unknown"
    with core.lock:
        core.call_counts[f"{method} {kind}"] += 1
        core.seen_user_agents.add(str(headers.get("User-Agent", "")))
    if kind == "host_metadata":
        return Reply(200, {})
    fault = _take_fault(core, method, target, kind)
    if fault is not None:
        if fault.delay > 0:
            core.stopping.wait(fault.delay)
        if fault.drop_connection:
            return Reply(0, None)
        if fault.status is not None:
            extra = (
                {} if fault.retry_after is None else {"Retry-After": format_retry_after(fault.retry_after)}
            )
            return Reply(fault.status, {"error_code": fault.error_code, "message": fault.message}, extra)
        if not fault.operation_error:
            fault = None
    try:
        identity = _check_auth(core, headers)
        if route is None:
            # The service has more API than the emulator: say "not implemented", not "no such
            # object", or a client would take a missing feature for a missing branch.
            raise ApiError(
                501, "NOT_IMPLEMENTED", f"the Lakebase emulator does not implement {method} {path}"
            )
        _kind, handler, params = route
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(params, query, json_body(raw_body), fault, identity)
        return Reply(200, handler(core, request))
    except ApiError as error:
        return Reply(error.status, {"error_code": error.error_code, "message": error.message})
    except Exception as exc:
        logger.exception("emulator failed on %s %s", method, path)
        message = core.redact(f"{type(exc).__name__}: {exc}")
        return Reply(500, {"error_code": "INTERNAL_ERROR", "message": message})


def _take_fault(core: EmulatorCore, method: str, target: str, kind: str) -> Fault | None:
    with core.lock:
        for fault in core.faults:
            if fault.remaining > 0 and fault.matches(method, target, kind):
                fault.remaining -= 1
                if fault.remaining == 0:
                    core.faults.remove(fault)
                return fault
    return None


def _check_auth(core: EmulatorCore, headers: Any) -> str:
    """The identity the personal access token belongs to."""
    header = str(headers.get("Authorization") or "")
    if not header.startswith("Bearer "):
        raise ApiError(401, "UNAUTHENTICATED", "Missing credentials: send 'Authorization: Bearer <token>'")
    offered = header[7:].strip().encode()
    with core.lock:
        if core.revoked is not None:
            raise ApiError(401, "UNAUTHENTICATED", core.revoked)
        for pat, identity in core.identities.items():
            if secrets.compare_digest(offered, pat.encode()):
                return identity
    raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
