"""Whether a PostgreSQL login is let in, and where it goes: the proxy's ``Authenticator``.

Routing: a session that arrives on an endpoint's own address (127.0.0.N) is for that endpoint.
On the single shared port there is no host name to go by (IP literals carry no SNI), so the
endpoint comes from ``options=endpoint=<endpoint uid>``, as Neon accepts, and failing
that from the endpoint the token was generated for.

Tokens: a database credential is accepted on every endpoint of the project it was issued in,
for the identity it was issued to, until it expires (checked at login only, as documented).
Lakebase's exact scope is unverified; the project is the smallest scope that lets one token
serve the several branches a client works with, and the plugin must not rely on more.
"""

from __future__ import annotations

import re
import time

from .core import EmulatorCore
from .proxy import Admission, Login, ProxyRefusal
from .state import Branch, Endpoint
from .storage import Refused
from .wire import format_time, now

_ENDPOINT_OPTION = re.compile(r"(?:^|\s)(?:-c\s*)?endpoint=([A-Za-z0-9_-]+)")


def authorize(core: EmulatorCore, login: Login) -> Admission:
    failed = f'password authentication failed for user "{login.user}"'
    cold = False
    with core.lock:
        credential = core.credentials.get(login.password)
        if credential is None:
            raise ProxyRefusal("28P01", failed)
        if credential.expires <= now():
            raise ProxyRefusal(
                "28P01",
                failed,
                f"The database credential (OAuth token) expired at {format_time(credential.expires)}; "
                "generate a new one with generate_database_credential.",
            )
        if login.user != credential.identity:
            raise ProxyRefusal("28P01", failed, "The token was issued to another identity.")
        branch, endpoint = _route(core, login, credential.endpoint, credential.project_id)
        if branch.project_id != credential.project_id:
            raise ProxyRefusal("28P01", failed, "The token was issued for another project.")
        if not branch.usable or branch.handle is None:
            raise ProxyRefusal("57P03", f"branch {branch.name} is not available")
        if endpoint.host is None:
            raise ProxyRefusal("57P03", "the endpoint's compute is starting up; retry in a moment")
        cold = endpoint.state == "IDLE"
        endpoint.last_active = time.monotonic()
        tag = core.endpoint_tag(branch, endpoint)
        handle = branch.handle
    if cold:
        core.stopping.wait(core.behaviour.cold_start_delay)
        with core.lock:
            endpoint.state = "ACTIVE"
            endpoint.last_active = time.monotonic()
    try:
        target = core.storage.target(handle, login.user, login.database)
    except Refused as refused:
        raise ProxyRefusal(refused.sqlstate, refused.message) from None
    return Admission(target, tag)


def _route(
    core: EmulatorCore, login: Login, token_endpoint: tuple[str, str], project_id: str
) -> tuple[Branch, Endpoint]:
    """The endpoint a session is for (call with the lock held)."""
    missing = ProxyRefusal("08006", "no Lakebase endpoint at this address")
    if core.loopback and login.local_host in core.by_host:
        ids = core.by_host[login.local_host]
        project = core.projects.get(ids[0])
        branch = project.branches.get(ids[1]) if project else None
        endpoint = branch.endpoints.get(ids[2]) if branch else None
        if branch is None or endpoint is None:
            raise missing
        return branch, endpoint
    if core.loopback and login.local_host != "127.0.0.1":
        raise missing
    match = _ENDPOINT_OPTION.search(login.options)
    if match is not None:
        wanted = match.group(1)
        project = core.projects.get(project_id)
        for branch in project.branches.values() if project else ():
            for endpoint in branch.endpoints.values():
                if wanted == endpoint.uid and branch.live:
                    return branch, endpoint
        raise ProxyRefusal("08006", f"endpoint {wanted!r} not found in the token's project")
    branch_name, endpoint_id = token_endpoint
    project = core.projects.get(project_id)
    branch = project.branches.get(branch_name) if project else None
    endpoint = branch.endpoints.get(endpoint_id) if branch else None
    if branch is None or endpoint is None:
        raise ProxyRefusal(
            "28P01",
            f'password authentication failed for user "{login.user}"',
            "The token's endpoint no longer exists.",
        )
    return branch, endpoint
