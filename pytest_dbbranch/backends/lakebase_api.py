"""The Lakebase REST calls the plugin makes for one project, at the fewest calls that stay safe.

Why a layer of its own: every call can be refused for reasons that are not the caller's
(branch limits, locks held by another operation, throttling, a lost response), and the
plugin's closing figures need to say how many calls a run made. So every call goes through
``_call``: counted in ``calls``, classified by ``lakebase_errors``, retried with full-jitter
backoff while ``retry_budget`` lasts, and turned into the package's errors otherwise.

Cost model (fidelity review, section 2): a branch's life needs a create, one well-timed
operation poll, a read of its ``primary`` endpoint, a credential and a delete that is not
waited for: 5 calls. Polling sleeps about the typical operation duration (learnt per kind of
operation) before the first poll, then polls every 0.5-1 s.

Works with databricks-sdk 0.130 to 0.162: ``update_branch``, ``delete_branch(purge=)``,
``get_endpoint`` and ``FieldMask`` exist in all of them (checked in 0.130.0 and 0.156.0).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Collection
from typing import Any

from ..errors import BranchExistsError, ConfigError, DbBranchError, LakebaseOperationError, ServerError
from .lakebase_errors import Failure, Kind, as_error, classify, classify_operation, install_status_capture
from .lakebase_records import (
    BranchInfo,
    Credential,
    EndpointInfo,
    ProjectInfo,
    branch_info,
    endpoint_info,
    enum_text,
    seconds,
)

logger = logging.getLogger(__name__)

#: Seconds: what an operation is assumed to take before any was seen.
SEED_DURATION = 1.0
#: Bounds of the step between polls once the first poll found the operation running.
POLL_STEP = (0.5, 1.0)
#: A 404 for an operation just started is the service catching up; tolerated this often.
OPERATION_404_RETRIES = 3
ENDPOINT_TIMEOUT = 120.0
USABLE_ENDPOINT_STATES = frozenset({"ACTIVE", "IDLE"})
PRIMARY = "primary"
#: The code of our own "operation not done in time" failure.
TIMED_OUT = "DBBRANCH_TIMED_OUT"


class _Handled(Exception):
    """A failure of a kind the calling method asked to handle itself (never leaves this module)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class LakebaseApi:
    """``WorkspaceClient.postgres`` for one project. Thread-safe: workers may share it."""

    def __init__(
        self, client: Any, project: str, *, retry_budget: float = 300.0, operation_timeout: float = 600.0
    ) -> None:
        self.client = client
        self.project = f"projects/{project.removeprefix('projects/')}"
        self.retry_budget = retry_budget
        self.operation_timeout = operation_timeout
        #: One count per SDK call made (the SDK's own transparent 429/503/connection retries
        #: and the later pages of a listing are inside one count).
        self.calls: collections.Counter[str] = collections.Counter()
        #: Create attempts the service refused (limits, conflicts, throttling) and we retried.
        self.refused_creates = 0
        #: Backoff: full jitter over ``backoff_base * 2**attempt``, capped.
        self.backoff_base = 0.5
        self.backoff_cap = 10.0
        #: How far before our create call a branch may have been created and still be the
        #: product of our own POST (clock difference with the service).
        self.adopt_skew = 120.0
        self.endpoint_timeout = ENDPOINT_TIMEOUT
        #: Seconds an operation of a kind not seen yet is assumed to take.
        self.seed_duration = SEED_DURATION
        self._lock = threading.Lock()
        self._durations: dict[str, float] = {}
        self._endpoints: dict[str, EndpointInfo] = {}
        #: When each branch this process created became READY, and how long after that its
        #: compute had a host (learnt): the first endpoint read waits for it.
        self._ready_at: dict[str, float] = {}
        self._host_delay = 0.0
        self.status_capture = install_status_capture(client)

    # -- names ---------------------------------------------------------------------------------

    def branch_name(self, branch: str) -> str:
        return branch if branch.startswith("projects/") else f"{self.project}/branches/{branch}"

    # -- reads ---------------------------------------------------------------------------------

    def project_info(self) -> ProjectInfo:
        try:
            project = self._call("get_project", "read the project", {Kind.NOT_FOUND}, name=self.project)
        except _Handled:
            raise ConfigError(
                f"Lakebase project {self.project} not found: check dbbranch_lakebase_project and that "
                "DATABRICKS_HOST (or the profile) names the workspace that holds it"
            ) from None
        status = project.status
        default = (status.default_branch if status else None) or f"{self.project}/branches/production"
        version = (status.pg_version if status else None) or 0
        return ProjectInfo(self.project, default, int(version))

    def get_branch(self, branch_id: str) -> BranchInfo | None:
        name = self.branch_name(branch_id)
        try:
            branch = self._call("get_branch", f"read branch {name}", {Kind.NOT_FOUND}, name=name)
        except _Handled:
            return None
        return branch_info(branch)

    def list_branches(self) -> list[BranchInfo]:
        branches = self._call("list_branches", f"list the branches of {self.project}", parent=self.project)
        return [branch_info(branch) for branch in branches]

    # -- branches ------------------------------------------------------------------------------

    def create_branch(
        self,
        branch_id: str,
        *,
        source: str,
        ttl: float | None,
        source_time: str | None = None,
        adopt: bool = True,
    ) -> BranchInfo:
        """Create and wait until READY. Refusals that mean "not now" are retried until
        ``retry_budget``. ``adopt``: the id is unique to this process (the plugin's per-run
        names), so a conflict on it can only be our own POST that the SDK re-sent after a lost
        response: the branch is taken over if a read confirms it (same source and expiry
        policy, made since this call began, not deleted). Pass False for ids other processes
        also create (templates): a conflict then raises ``BranchExistsError``."""
        from databricks.sdk.service.postgres import Branch, BranchSpec
        from google.protobuf.duration_pb2 import Duration
        from google.protobuf.timestamp_pb2 import Timestamp

        source_name = self.branch_name(source)
        spec = BranchSpec(source_branch=source_name)
        if ttl is None:
            spec.no_expiry = True
        elif ttl < 1:
            raise ConfigError(f"a Lakebase branch TTL must be at least 1 s, got {ttl}")
        else:
            spec.ttl = Duration(seconds=int(ttl))
        if source_time is not None:
            stamp = Timestamp()
            try:
                stamp.FromJsonString(source_time)
            except ValueError:
                raise ConfigError(f"source time {source_time!r} is not an RFC 3339 time") from None
            spec.source_branch_time = stamp
        what = f"create branch {branch_id}"
        began_wall, deadline = time.time(), time.monotonic() + self.retry_budget
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                body = Branch(spec=spec)
                operation = self._call(
                    "create_branch",
                    what,
                    {Kind.RETRY, Kind.EXISTS},
                    parent=self.project,
                    branch=body,
                    branch_id=branch_id,
                )
                finished = self._wait("create_branch", operation, what, started)
            except _Handled as handled:
                failure = handled.failure
                if failure.code == TIMED_OUT:
                    with contextlib.suppress(DbBranchError):
                        self.delete_branch(branch_id)
                    raise ServerError(
                        f"Lakebase: {failure.message}; asked the service to delete it (purge) so it "
                        "does not hold a slot of the project's branch limit"
                    ) from None
                if failure.kind not in (Kind.RETRY, Kind.EXISTS):
                    raise _operation_error(failure, what) from None
                if failure.kind is Kind.EXISTS:
                    existing = self.get_branch(branch_id)
                    if existing is not None:
                        refusal = (
                            self._adopt_refusal(existing, source_name, ttl, began_wall) if adopt else "exists"
                        )
                        if refusal is None:
                            logger.info(
                                "Lakebase: adopting %s, created by our own re-sent request", existing.name
                            )
                            return self._until_ready(existing, what, started)
                        raise BranchExistsError(
                            f"Lakebase branch {existing.name} already exists and is not this request's "
                            f"({refusal}): use another id, or delete that branch if it is a leftover"
                        ) from None
                    # The conflict was not a duplicate (an operation in the way): "not now".
                attempt += 1
                with self._lock:
                    self.refused_creates += 1
                self._backoff(attempt, failure, deadline, what)
                continue
            with self._lock:
                self._ready_at[self.branch_name(branch_id)] = time.monotonic()
            response = finished.response
            if response:
                return branch_info(Branch.from_dict(response))
            info = self.get_branch(branch_id)
            if info is None:
                raise ServerError(f"Lakebase: {what}: done, but the branch cannot be read back")
            return info

    def delete_branch(self, branch_id: str, *, wait: bool = False) -> None:
        """Permanent delete (``purge``): a soft-deleted branch may keep its id taken and count
        against limits. Not waited for unless asked: the TTL is the safety net."""
        name = self.branch_name(branch_id)
        with self._lock:
            self._endpoints.pop(name, None)
        what = f"delete branch {name}"
        started = time.monotonic()
        try:
            operation = self._call("delete_branch", what, {Kind.NOT_FOUND}, name=name, purge=True)
            if wait:
                self._wait("delete_branch", operation, what, started)
        except _Handled as handled:
            if handled.failure.kind is not Kind.NOT_FOUND:
                raise _operation_error(handled.failure, what) from None

    def extend(self, branch_id: str, ttl: float, *, wait: bool = True) -> BranchInfo | None:
        """Move the branch's expiry to ``ttl`` seconds from now (the heartbeat of long-lived
        branches). Returns the branch as updated when waited for."""
        from databricks.sdk.common.types.fieldmask import FieldMask
        from databricks.sdk.service.postgres import Branch, BranchSpec
        from google.protobuf.timestamp_pb2 import Timestamp

        name = self.branch_name(branch_id)
        what = f"extend the TTL of branch {name}"
        # An absolute expiry: whether an updated ``ttl`` counts from the branch's creation
        # or from the update is not documented, a time is unambiguous.
        stamp = Timestamp()
        stamp.FromSeconds(int(time.time() + max(1.0, ttl)))
        body = Branch(name=name, spec=BranchSpec(expire_time=stamp))
        mask = FieldMask(["spec.expiration"])  # type: ignore[no-untyped-call]
        started = time.monotonic()
        try:
            operation = self._call(
                "update_branch", what, {Kind.NOT_FOUND}, name=name, branch=body, update_mask=mask
            )
            if not wait:
                return None
            finished = self._wait("update_branch", operation, what, started)
        except _Handled as handled:
            if handled.failure.kind is Kind.NOT_FOUND:
                raise DbBranchError(
                    f"Lakebase: cannot {what}: the branch is gone (expired or deleted) "
                    f"({handled.failure.describe()})"
                ) from None
            raise _operation_error(handled.failure, what) from None
        return (
            branch_info(Branch.from_dict(finished.response)) if finished.response else self.get_branch(name)
        )

    # -- endpoints and credentials -------------------------------------------------------------

    def endpoint(self, branch_id: str) -> EndpointInfo:
        """The branch's read-write endpoint, ready for logins. Read as ``primary`` (the service
        makes one with every branch); listed, then created, only when that is missing (older
        behaviour). Cached per branch: an endpoint's host does not change."""
        branch = self.branch_name(branch_id)
        with self._lock:
            cached = self._endpoints.get(branch)
        if cached is not None:
            return cached
        deadline = time.monotonic() + self.endpoint_timeout
        with self._lock:
            ready_at = self._ready_at.pop(branch, None)
            delay = self._host_delay
        if ready_at is not None and delay > 0:
            # A new branch's compute gets its host a moment after the branch is READY: read
            # when it is expected (learnt from earlier branches), not once before and once after.
            time.sleep(max(0.0, ready_at + delay - time.monotonic()))
        endpoint = self._read_endpoint(f"{branch}/endpoints/{PRIMARY}")
        if endpoint is None:
            endpoint = self._find_or_create_endpoint(branch)
        while True:
            host = endpoint.status.hosts.host if endpoint.status and endpoint.status.hosts else None
            state = enum_text(endpoint.status.current_state if endpoint.status else None)
            if host and (state is None or state in USABLE_ENDPOINT_STATES):
                break
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"Lakebase endpoint {endpoint.name} is not usable after {self.endpoint_timeout:.0f}s "
                    f"(state {state or 'unknown'}, host {host or 'not set'}); check the project's compute "
                    "limits (active computes) in the Lakebase UI"
                )
            time.sleep(POLL_STEP[0])
            endpoint = self._read_endpoint(endpoint.name) or endpoint
        info = endpoint_info(endpoint.name, host, state)
        with self._lock:
            self._endpoints[branch] = info
            if ready_at is not None:
                seen = time.monotonic() - ready_at
                self._host_delay = seen if self._host_delay == 0 else 0.5 * (self._host_delay + seen)
        return info

    def credential(self, endpoint_name: str, *, ttl: float | None = None) -> Credential:
        """A fresh database credential (OAuth token used as the PostgreSQL password). Never
        cached here: the caller knows when a token is still good for its next login (expiry
        is enforced at login only) and caches it."""
        from google.protobuf.duration_pb2 import Duration

        lifetime = None if ttl is None else Duration(seconds=int(ttl))
        what = f"get a database credential for {endpoint_name}"
        result = self._call("generate_database_credential", what, endpoint=endpoint_name, ttl=lifetime)
        if not result.token:
            raise ServerError(f"Lakebase returned an empty database credential for {endpoint_name}")
        expires = seconds(result.expire_time)
        return Credential(
            token=result.token, expires_at=expires if expires is not None else time.time() + 3600
        )

    def _read_endpoint(self, name: str) -> Any:
        try:
            return self._call("get_endpoint", f"read endpoint {name}", {Kind.NOT_FOUND}, name=name)
        except _Handled:
            return None

    def _find_or_create_endpoint(self, branch: str) -> Any:
        from databricks.sdk.service.postgres import Endpoint, EndpointSpec, EndpointType
        from google.protobuf.duration_pb2 import Duration

        def read_write() -> Any:
            listed = self._call("list_endpoints", f"list the endpoints of {branch}", parent=branch)
            for candidate in listed:
                kind = candidate.status.endpoint_type if candidate.status else None
                kind = kind or (candidate.spec.endpoint_type if candidate.spec else None)
                if enum_text(kind) == EndpointType.ENDPOINT_TYPE_READ_WRITE.value:
                    return candidate
            return None

        found = read_write()
        if found is not None:
            return found
        spec = EndpointSpec(
            endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE,
            autoscaling_limit_min_cu=0.5,
            autoscaling_limit_max_cu=1.0,
            suspend_timeout_duration=Duration(seconds=300),
        )
        what = f"create a read-write endpoint for {branch}"
        started = time.monotonic()
        try:
            operation = self._call(
                "create_endpoint",
                what,
                {Kind.EXISTS},
                parent=branch,
                endpoint=Endpoint(spec=spec),
                endpoint_id=PRIMARY,
            )
            finished = self._wait("create_endpoint", operation, what, started)
        except _Handled as handled:
            if handled.failure.kind is not Kind.EXISTS:
                raise _operation_error(handled.failure, what) from None
            # Made meanwhile, by the service or another worker, maybe under another id.
            found = read_write()
            if found is None:
                raise as_error(handled.failure, what=what, project=self.project) from None
            return found
        if finished.response:
            return Endpoint.from_dict(finished.response)
        return self._read_endpoint(f"{branch}/endpoints/{PRIMARY}") or read_write()

    # -- calls, operations, backoff --------------------------------------------------------------

    def _call(self, method: str, what: str, handle: Collection[Kind] = (), **arguments: Any) -> Any:
        """``client.postgres.<method>(**arguments)``, counted; transient refusals retried
        (unless the caller handles them); other failures raised as the package's errors, or as
        ``_Handled``. Only creates are not idempotent: a 5xx may mean they were done. Reads and
        credentials need CAN USE on the project, changes CAN MANAGE."""
        from databricks.sdk.errors.base import DatabricksError

        function = getattr(self.client.postgres, method)
        idempotent = not method.startswith("create_")
        reads = method.startswith(("get_", "list_", "generate_"))
        permission = "CAN USE" if reads else "CAN MANAGE"

        deadline = time.monotonic() + self.retry_budget
        attempt = 0
        while True:
            with self._lock:
                self.calls[method] += 1
            try:
                result = function(**arguments)
                # A listing pages lazily: its failures belong to this call.
                return list(result) if method.startswith("list_") else result
            except (DatabricksError, TimeoutError) as exc:
                failure = classify(exc, idempotent=idempotent)
            if failure.kind in handle:
                raise _Handled(failure)
            if failure.kind is not Kind.RETRY:
                raise as_error(failure, what=what, project=self.project, permission=permission)
            attempt += 1
            self._backoff(attempt, failure, deadline, what)

    def _backoff(self, attempt: int, failure: Failure, deadline: float, what: str) -> None:
        """Sleep before attempt ``attempt + 1``; full jitter so refused workers spread out."""
        delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        delay = max(delay, failure.retry_after or 0.0)
        if time.monotonic() + delay > deadline:
            raise ServerError(
                f"Lakebase kept refusing to {what} for {self.retry_budget:.0f}s ({attempt} attempts; last: "
                f"{failure.describe()}). The project is at a limit or busy: delete unused branches "
                "(`dbbranch gc`), lower dbbranch_lakebase_budget, or run fewer jobs on this project at once"
            )
        time.sleep(delay)

    def _first_poll(self, kind: str) -> float:
        with self._lock:
            expected = self._durations.get(kind, self.seed_duration)
        return expected * 1.1 + 0.1

    def _observe(self, kind: str, elapsed: float, first_poll_hit: bool) -> None:
        """Learn the typical duration. Done at the first poll only bounds it from above, so
        the estimate drifts down slowly (to follow faster operations); a miss raises it fast
        (a miss costs a call on every branch)."""
        with self._lock:
            estimate = self._durations.get(kind, self.seed_duration)
            if first_poll_hit:
                estimate += 0.1 * (0.85 * elapsed - estimate)
            else:
                estimate += 0.7 * (elapsed - estimate)
            self._durations[kind] = min(max(estimate, 0.05), 60.0)

    def _wait(self, kind: str, operation: Any, what: str, started: float) -> Any:
        """The finished ``Operation``; ``_Handled`` if it failed or outlived ``operation_timeout``."""
        initial = getattr(operation, "_operation", None)
        if initial is not None and initial.done:
            return _checked(initial)
        name = operation.name()
        deadline = started + self.operation_timeout
        delay = self._first_poll(kind) - (time.monotonic() - started)
        polls = missing = 0
        while True:
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            try:
                current = self._call("get_operation", f"follow {what}", {Kind.NOT_FOUND}, name=name)
            except _Handled as handled:
                missing += 1
                if missing > OPERATION_404_RETRIES:
                    raise ServerError(
                        f"Lakebase: {what}: its operation {name} is not found ({handled.failure.describe()})"
                    ) from None
                delay = POLL_STEP[0] / 2
                continue
            polls += 1
            elapsed = time.monotonic() - started
            if current.done:
                self._observe(kind, elapsed, polls == 1)
                return _checked(current)
            if time.monotonic() >= deadline:
                message = f"{what}: not done after {self.operation_timeout:.0f}s (operation {name})"
                raise _Handled(Failure(Kind.OTHER, None, TIMED_OUT, message))
            with self._lock:
                expected = self._durations.get(kind, self.seed_duration)
            delay = min(max(0.25 * expected, POLL_STEP[0]), POLL_STEP[1])

    def _adopt_refusal(self, branch: BranchInfo, source: str, ttl: float | None, began: float) -> str | None:
        """Why ``branch`` cannot be the product of our own create call, or None if it can."""
        if branch.is_default or branch.is_protected:
            return "it is the default or a protected branch"
        if branch.source_branch != source:
            return f"it was branched from {branch.source_branch or 'an unknown source'}, not {source}"
        if branch.state not in (None, "INIT", "READY"):
            return f"its state is {branch.state}"
        if branch.create_time is None or branch.create_time < began - self.adopt_skew:
            return "it was created before this request"
        if (ttl is None) != (branch.expire_time is None):
            return "its expiry policy differs"
        return None

    def _until_ready(self, branch: BranchInfo, what: str, started: float) -> BranchInfo:
        deadline = started + self.operation_timeout
        delay = self._first_poll("create_branch") - (time.monotonic() - started)
        while not branch.ready:
            if time.monotonic() >= deadline:
                raise ServerError(f"Lakebase: {what}: not READY after {self.operation_timeout:.0f}s")
            time.sleep(max(0.0, delay))
            delay = POLL_STEP[0]
            found = self.get_branch(branch.name)
            if found is None:
                raise ServerError(f"Lakebase: {what}: the branch went away while it was being created")
            branch = found
        return branch


def _checked(operation: Any) -> Any:
    if operation.error is not None:
        raise _Handled(classify_operation(operation.error.error_code, operation.error.message))
    return operation


def _operation_error(failure: Failure, what: str) -> DbBranchError:
    if failure.code == TIMED_OUT:
        return ServerError(f"Lakebase: {failure.message}")
    if failure.status is None and failure.code:
        return LakebaseOperationError(failure.code, failure.message, what)
    return DbBranchError(f"Lakebase: cannot {what} ({failure.describe()})")
