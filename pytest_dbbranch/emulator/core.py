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
from .backing import BackingDatabases
from .state import Branch, Credential, Endpoint, Fault, Operation, Project
from .wire import ApiError

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


class EmulatorCore:
    """The emulator's state, its backing databases and its operations.

    ``projects``, ``credentials``, ``faults``, ``call_counts``, ``seen_user_agents`` and ``revoked``
    are shared by HTTP handler threads, operation workers, the reaper and proxy sessions, so
    they are read and written only with ``lock`` held.
    """

    def __init__(
        self,
        backing: ServerAddress,
        *,
        token: str,
        user_name: str,
        branch_limit: int,
        operation_delay: float,
        credential_lifetime: float,
        auto_endpoint: bool,
        page_size: int,
    ) -> None:
        self.backing = backing
        self.token = token
        self.user_name = user_name
        self.branch_limit = branch_limit
        self.operation_delay = operation_delay
        self.credential_lifetime = credential_lifetime
        self.auto_endpoint = auto_endpoint
        self.page_size = page_size
        self.instance = uuid.uuid4().hex[:12]
        self.databases = BackingDatabases(backing, self.instance)
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.projects: dict[str, Project] = {}
        self.credentials: dict[str, Credential] = {}
        self.faults: list[Fault] = []
        self.call_counts: Counter[str] = Counter()
        self.seen_user_agents: set[str] = set()
        self.revoked: str | None = None
        self.pg_version = 0
        self._workers: set[threading.Thread] = set()

    # -- background work -------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
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
                error = {"error_code": "INTERNAL_ERROR", "message": self.backing.redact(str(exc))}
            self.stopping.wait(max(0.0, started + self.operation_delay - time.monotonic()))
            with self.lock:
                if commit is not None:
                    op.response = commit()
                else:
                    rollback()
                    op.error = error
                op.done = True

        self._spawn("lakebase-" + op.kind, body)

    # -- lookups (call with the lock held) -------------------------------------------------

    def lookup_project(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise ApiError(404, "NOT_FOUND", f"Project projects/{project_id} not found")
        return project

    def lookup_branch(self, project_id: str, branch_id: str) -> tuple[Project, Branch]:
        project = self.lookup_project(project_id)
        branch = project.branches.get(branch_id)
        if branch is None:
            raise ApiError(404, "NOT_FOUND", f"Branch projects/{project_id}/branches/{branch_id} not found")
        return project, branch

    def lookup_endpoint(self, project_id: str, branch_id: str, endpoint_id: str) -> tuple[Branch, Endpoint]:
        _project, branch = self.lookup_branch(project_id, branch_id)
        endpoint = branch.endpoints.get(endpoint_id)
        if endpoint is None:
            raise ApiError(404, "NOT_FOUND", f"Endpoint {branch.name}/endpoints/{endpoint_id} not found")
        return branch, endpoint

    # -- deleting branches (the API and the reaper both do) --------------------------------

    def refuse_delete_reason(self, project: Project, branch: Branch) -> str | None:
        if branch.default:
            return f"{branch.name} is the project's default branch and cannot be deleted"
        if branch.protected:
            return f"{branch.name} is protected and cannot be deleted"
        if branch.state != "READY":
            return f"{branch.name} is still being created"
        children = [child for child in project.branches.values() if child.source_branch == branch.name]
        if children:
            names = ", ".join(child.branch_id for child in children)
            return f"{branch.name} has child branches ({names}); delete them first"
        return None

    def begin_delete(self, project: Project, branch: Branch, fault: Fault | None) -> Operation:
        op = self.new_operation(project, "delete_branch")
        branch.deleting = op
        database = branch.database

        def work() -> Callable[[], dict[str, Any]]:
            if database is not None:
                self.databases.drop(database)

            def commit() -> dict[str, Any]:
                project.branches.pop(branch.branch_id, None)
                return {}

            return commit

        def rollback() -> None:
            branch.deleting = None

        self.run_operation(op, work, rollback, fault)
        return op
