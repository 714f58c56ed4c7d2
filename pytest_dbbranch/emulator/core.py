"""What the REST handlers, the reaper and the proxy's login check share, behind one lock.

The handlers live in modules of their own and take an ``EmulatorCore``; ``LakebaseEmulator``
(service.py) is an ``EmulatorCore`` with the HTTP server, the proxy and the reaper around it.
That way the handlers never need the servers that call them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..conninfo import ServerAddress
from . import hosts
from .options import Behaviour
from .proxy import PgProxy
from .state import Branch, Credential, Endpoint, Fault, Operation, Project
from .storage import Storage
from .wire import ApiError, now

logger = logging.getLogger(__name__)

#: The slow part of an operation: returns the commit that makes its result visible.
Work = Callable[[], Callable[[], dict[str, Any]]]


class OperationFailure(Exception):
    """Some failures (limits, failed clones) only reach a client through the polled operation."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def fail(error_code: str, message: str) -> Work:
    def work() -> Callable[[], dict[str, Any]]:
        raise OperationFailure(error_code, message)

    return work


@dataclass
class Request:
    params: tuple[str, ...]
    query: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None
    #: The Databricks identity whose personal access token came with the request.
    identity: str = ""


class EmulatorCore:
    """The emulator's state, its storage and its operations.

    ``projects``, ``credentials``, ``identities``, ``faults``, ``call_counts``,
    ``seen_user_agents`` and ``revoked`` are shared by HTTP handler threads, operation
    workers, the reaper and proxy sessions, so they are read and written only with ``lock``.
    """

    def __init__(
        self, storage: Storage, behaviour: Behaviour, *, token: str, user_name: str, page_size: int
    ) -> None:
        self.storage = storage
        self.behaviour = behaviour
        self.token = token
        self.user_name = user_name
        self.page_size = page_size
        self.instance = uuid.uuid4().hex[:12]
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.projects: dict[str, Project] = {}
        self.credentials: dict[str, Credential] = {}
        #: Personal access token -> identity; the owner's is ``token``.
        self.identities: dict[str, str] = {token: user_name}
        self.faults: list[Fault] = []
        self.call_counts: Counter[str] = Counter()
        self.seen_user_agents: set[str] = set()
        self.revoked: str | None = None
        self.pg_version = 0
        self.backing: ServerAddress | None = None
        self.proxy: PgProxy | None = None
        #: Loopback mode: endpoint host -> (project, branch, endpoint) ids.
        self.by_host: dict[str, tuple[str, str, str]] = {}
        self.loopback = False
        self.single_port = 0
        self._workers: set[threading.Thread] = set()

    # -- background work -------------------------------------------------------------------

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except Exception:
                logger.exception("emulator worker %s failed", name)
            finally:
                with self.lock:
                    self._workers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self.lock:
            self._workers.add(thread)
        thread.start()

    def join_workers(self) -> None:
        while True:
            with self.lock:
                workers = list(self._workers)
            if not workers:
                break
            for worker in workers:
                worker.join()

    def new_operation(self, project: Project, kind: str) -> Operation:
        op = Operation(f"{project.name}/operations/op-{secrets.token_hex(8)}", kind)
        project.operations[op.name.rsplit("/", 1)[1]] = op
        return op

    def run_operation(
        self,
        op: Operation,
        work: Work,
        rollback: Callable[[], None],
        fault: Fault | None,
    ) -> None:
        """Slow part outside the lock; the visible change and ``done`` land together, after the delay."""
        delay = self.behaviour.draw_operation_delay()

        def body() -> None:
            started = time.monotonic()
            commit: Callable[[], dict[str, Any]] | None = None
            error: dict[str, str] | None = None
            try:
                if fault is not None:
                    raise OperationFailure(fault.error_code, fault.message)
                commit = work()
            except OperationFailure as failure:
                error = {"error_code": failure.error_code, "message": failure.message}
            except Exception as exc:
                logger.debug("operation %s failed", op.kind, exc_info=True)
                error = {
                    "error_code": "INTERNAL_ERROR",
                    "message": self.redact(f"{type(exc).__name__}: {exc}"),
                }
            self.stopping.wait(max(0.0, started + delay - time.monotonic()))
            with self.lock:
                if commit is not None:
                    op.response = commit()
                else:
                    rollback()
                    op.error = error
                op.done = True

        self.spawn("lakebase-" + op.kind, body)

    def redact(self, text: str) -> str:
        """Error text may quote a connection string; the backing password never leaves."""
        return self.backing.redact(text) if self.backing is not None else text

    # -- lookups (call with the lock held) -------------------------------------------------

    def lookup_project(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise ApiError(404, "NOT_FOUND", f"Project projects/{project_id} not found")
        return project

    def lookup_branch(
        self, project_id: str, branch_id: str, *, deleted: bool = False
    ) -> tuple[Project, Branch]:
        """A soft-deleted branch is found only when ``deleted`` (purge, undelete)."""
        project = self.lookup_project(project_id)
        branch = project.branches.get(branch_id)
        if branch is None or (branch.deleted_at is not None and not deleted):
            raise ApiError(404, "NOT_FOUND", f"Branch projects/{project_id}/branches/{branch_id} not found")
        return project, branch

    def lookup_endpoint(self, project_id: str, branch_id: str, endpoint_id: str) -> tuple[Branch, Endpoint]:
        _project, branch = self.lookup_branch(project_id, branch_id)
        endpoint = branch.endpoints.get(endpoint_id)
        if endpoint is None:
            raise ApiError(404, "NOT_FOUND", f"Endpoint {branch.name}/endpoints/{endpoint_id} not found")
        return branch, endpoint

    def children(self, project: Project, branch: Branch) -> list[Branch]:
        return [b for b in project.branches.values() if b.source_branch == branch.name and b.live]

    # -- endpoints' computes ---------------------------------------------------------------

    def endpoint_tag(self, branch: Branch, endpoint: Endpoint) -> str:
        return f"{branch.name}/endpoints/{endpoint.endpoint_id}"

    def bring_up(self, branch: Branch, endpoint: Endpoint, *, delayed: bool = True) -> None:
        """Give the endpoint a host, now or after the compute's start delay (call with the lock)."""
        delay = self.behaviour.compute_start_delay if delayed else 0.0
        if delay <= 0:
            self._open(branch, endpoint)
            return

        def later() -> None:
            if self.stopping.wait(delay):
                return
            with self.lock:
                if branch.usable and branch.endpoints.get(endpoint.endpoint_id) is endpoint:
                    self._open(branch, endpoint)

        self.spawn("lakebase-compute", later)

    def _open(self, branch: Branch, endpoint: Endpoint) -> None:
        if endpoint.host is None:
            assert self.proxy is not None
            if self.loopback:
                endpoint.host = hosts.claim(self.proxy.listen)
                endpoint.port = hosts.ENDPOINT_PORT
                self.by_host[endpoint.host] = (branch.project_id, branch.branch_id, endpoint.endpoint_id)
            else:
                endpoint.host, endpoint.port = "127.0.0.1", self.single_port
        endpoint.state, endpoint.updated = "ACTIVE", now()
        endpoint.last_active = time.monotonic()

    def shut_down(self, branch: Branch, endpoint: Endpoint) -> None:
        """Close the endpoint's address and end its sessions: a deleted compute is unreachable."""
        if endpoint.host is not None and self.loopback and self.proxy is not None:
            self.proxy.unlisten(endpoint.host, endpoint.port)
            self.by_host.pop(endpoint.host, None)
            hosts.release(endpoint.host)
        endpoint.host, endpoint.state = None, "INIT"
        if self.proxy is not None:
            tag = self.endpoint_tag(branch, endpoint)
            self.proxy.cut(lambda other: other == tag)

    def suspend_idle(self) -> None:
        """Scale to zero: a compute without traffic for the suspend timeout closes its sessions."""
        timeout = self.behaviour.suspend_timeout
        if timeout is None or self.proxy is None:
            return
        busy = self.proxy.last_activity()
        moment = time.monotonic()
        with self.lock:
            for project in self.projects.values():
                for branch in project.branches.values():
                    for endpoint in branch.endpoints.values():
                        if endpoint.state != "ACTIVE":
                            continue
                        tag = self.endpoint_tag(branch, endpoint)
                        last = max(endpoint.last_active, busy.get(tag, 0.0))
                        if moment - last >= timeout:
                            endpoint.state, endpoint.updated = "IDLE", now()
                            self.proxy.cut(tag.__eq__)

    # -- deleting branches (the API and the reaper both do) --------------------------------

    def refuse_delete_reason(self, project: Project, branch: Branch) -> str | None:
        if branch.default:
            return f"{branch.name} is the project's default branch and cannot be deleted"
        if branch.protected:
            return f"{branch.name} is protected and cannot be deleted"
        if branch.state != "READY":
            return f"{branch.name} is still being created"
        children = self.children(project, branch)
        if children:
            names = ", ".join(child.branch_id for child in children)
            return f"{branch.name} has child branches ({names}); delete them first"
        return None

    def begin_delete(
        self, project: Project, branch: Branch, fault: Fault | None, *, purge: bool
    ) -> Operation:
        """Soft delete stops the branch's compute and keeps its data; purge removes both."""
        op = self.new_operation(project, "delete_branch")
        branch.deleting = op
        handle = branch.handle
        soft = not purge and branch.deleted_at is None
        for endpoint in branch.endpoints.values():
            self.shut_down(branch, endpoint)

        def work() -> Callable[[], dict[str, Any]]:
            if handle is not None:
                if soft:
                    self.storage.suspend(handle)
                else:
                    self.storage.drop(handle)

            def commit() -> dict[str, Any]:
                branch.deleting = None
                if soft:
                    branch.deleted_at = now()
                    branch.state = "DELETED"
                else:
                    project.branches.pop(branch.branch_id, None)
                return {}

            return commit

        def rollback() -> None:
            branch.deleting = None
            for endpoint in branch.endpoints.values():
                self.bring_up(branch, endpoint, delayed=False)

        self.run_operation(op, work, rollback, fault)
        return op

    def live_branches(self, project: Project) -> int:
        return sum(1 for branch in project.branches.values() if branch.live)
