"""What a failed Lakebase call means for the caller: retry, "it exists", "it is gone", or stop.

The SDK's exception class is not enough to decide. It maps by ``error_code`` first and by HTTP
status second, so a limit reported as ``400 QUOTA_EXCEEDED`` arrives as ``BadRequest``, a
``409 ABORTED`` (a concurrency conflict: safe to retry) as a ``ResourceConflict`` like a true
duplicate, and statuses it has no class for (422, 423 Locked, 502) as a bare
``DatabricksError`` that does not even keep the status. So we look at both the code and the
status; ``install_status_capture`` makes the SDK record the status on every error it raises.

Long-running operations fail with a code and no status (``classify_operation``), and the SDK
raises ``TimeoutError`` once its own transparent retries (429/503, lost connections) run out,
with the last error as its cause.

Messages never carry secrets: the SDK appends its client configuration to 401/403 messages
(``". Config: host=..., token=***"``), which we cut, and anything token-shaped is masked.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from ..errors import BranchExistsError, DbBranchError, ServerError

#: Refusals that say "not now": limits, throttling, locks held by another operation.
RETRY_CODES = frozenset(
    {
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        "RESOURCE_LIMIT_EXCEEDED",
        "REQUEST_LIMIT_EXCEEDED",
        "ABORTED",
        "COULD_NOT_ACQUIRE_LOCK",
        "UNAVAILABLE",
        "TEMPORARILY_UNAVAILABLE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNDER_MAINTENANCE",
    }
)
#: Retried only for reads: for a write they may mean it was applied.
READ_RETRY_CODES = frozenset({"INTERNAL_ERROR", "DEADLINE_EXCEEDED", "UNKNOWN"})
RETRY_STATUSES = frozenset({423, 429, 503})
EXISTS_CODES = frozenset({"ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS"})
NOT_FOUND_CODES = frozenset({"NOT_FOUND", "RESOURCE_DOES_NOT_EXIST", "ENDPOINT_NOT_FOUND"})

_REFRESH_HINT = (
    "the Databricks token is missing, wrong or expired: refresh it (set DATABRICKS_TOKEN, run "
    "`databricks auth login --host <workspace>`, or name a profile with dbbranch_lakebase_profile)"
)


class Kind(enum.Enum):
    RETRY = "retry"
    #: A duplicate, or a 409 with no telling code: confirm with a read before trusting it.
    EXISTS = "exists"
    NOT_FOUND = "not found"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission denied"
    BAD_REQUEST = "bad request"
    #: 501: this workspace (or an emulator) does not offer the call.
    UNSUPPORTED = "unsupported"
    OTHER = "other"


@dataclass(frozen=True)
class Failure:
    kind: Kind
    status: int | None
    code: str | None
    #: The service's words, without the SDK's configuration dump or anything token-shaped.
    message: str
    #: Seconds the service asked us to wait (429/503 ``Retry-After``), when it said.
    retry_after: float | None = None

    def describe(self) -> str:
        parts = [str(self.status)] if self.status else []
        if self.code:
            parts.append(self.code)
        prefix = f"[{' '.join(parts)}] " if parts else ""
        return f"{prefix}{self.message}".strip()


_SECRETS = [
    re.compile(r"\bdapi[0-9a-zA-Z-]{8,}"),
    re.compile(r"\bdose[0-9a-zA-Z-]{8,}"),
    re.compile(r"\beyJ[0-9A-Za-z_-]{8,}(?:\.[0-9A-Za-z_-]+){0,2}"),
    re.compile(r"(?i)(bearer\s+)[^\s,;]+"),
    re.compile(r"""(?i)(["']?(?:token|access_token|password|client_secret)["']?\s*[:=]\s*["']?)[^"',\s]+"""),
]


def redact(text: str) -> str:
    """Mask anything that looks like a token; our messages reach CI logs."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def clean_message(exc: BaseException) -> str:
    """The service's own words: the SDK appends ``". Config: ..."`` and ``". Env: ..."`` to
    401/403 messages, which name the auth setup and never help the reader here."""
    text = str(exc)
    for marker in (". Config: ", ". Env: ", "Config: "):
        if marker in text:
            text = text.split(marker, 1)[0]
            break
    return redact(text.strip())


# -- the HTTP status of an SDK error --------------------------------------------------------

_STATUS_KEY = "dbbranch_http_status"


class StatusCapture:
    """An SDK error customizer: records the response's status on the error it builds (its
    constructor keeps unknown keyword arguments in ``kwargs``)."""

    def customize_error(self, response: Any, kwargs: dict[str, Any]) -> None:
        kwargs[_STATUS_KEY] = response.status_code


def install_status_capture(client: Any) -> bool:
    """Make ``client`` keep the HTTP status on its errors; False if this SDK version's
    internals differ (then statuses the SDK has no class for read as unknown). The path used
    exists in databricks-sdk 0.130 to 0.162."""
    try:
        customizers = client.api_client._api_client._error_parser._error_customizers
    except AttributeError:
        return False
    if not isinstance(customizers, list):
        return False
    if not any(isinstance(existing, StatusCapture) for existing in customizers):
        customizers.append(StatusCapture())
    return True


def http_status(exc: BaseException) -> int | None:
    """The status the error came with: recorded by ``StatusCapture``, else implied by the
    SDK class that only one status maps to (``None`` for a bare ``DatabricksError``)."""
    kwargs = getattr(exc, "kwargs", None)
    if isinstance(kwargs, dict):
        for key in (_STATUS_KEY, "status_code"):
            value = kwargs.get(key)
            if isinstance(value, int):
                return value
    try:
        from databricks.sdk.errors import platform
    except ImportError:  # pragma: no cover - the SDK is what raised
        return None
    by_class = {cls: status for status, cls in platform.STATUS_CODE_MAPPING.items()}
    for cls in type(exc).__mro__:
        if cls in by_class:
            return by_class[cls]
    return None


def _code_text(code: Any) -> str | None:
    if code is None:
        return None
    value = getattr(code, "value", code)
    return str(value) or None


# -- classification -------------------------------------------------------------------------


def classify(exc: BaseException, *, idempotent: bool) -> Failure:
    """Decide what ``exc`` (raised by one SDK call) means. ``idempotent``: the call was a
    read, so a 5xx can be retried without risk of doing it twice."""
    from databricks.sdk.errors.base import DatabricksError

    if isinstance(exc, TimeoutError):
        cause = exc.__cause__
        if isinstance(cause, DatabricksError):
            inner = classify(cause, idempotent=idempotent)
            # The SDK gave up on a 429/503 or a flaky connection: transient either way, and
            # it has already waited as long as the service asked.
            return Failure(Kind.RETRY, inner.status, inner.code, inner.message)
        reason = f": {clean_message(cause)}" if cause is not None else ""
        return Failure(Kind.RETRY, None, None, f"no answer from the workspace ({clean_message(exc)}{reason})")
    if not isinstance(exc, DatabricksError):
        return Failure(Kind.OTHER, None, None, f"{type(exc).__name__}: {clean_message(exc)}")
    status = http_status(exc)
    code = _code_text(getattr(exc, "error_code", None))
    message = clean_message(exc) or "no message"
    retry_after = getattr(exc, "retry_after_secs", None)
    after = float(retry_after) if isinstance(retry_after, int | float) else None
    return Failure(_kind(status, code, idempotent=idempotent), status, code, message, after)


def classify_operation(code: Any, message: str | None) -> Failure:
    """A long-running operation that finished with an error: a code, no status. Only the
    "not now" codes are retried (by starting the operation again); an internal error of the
    operation itself is reported rather than repeated for minutes."""
    text = _code_text(code) or "UNKNOWN"
    return Failure(_kind(None, text, idempotent=False), None, text, redact(message or "no message"))


def _kind(status: int | None, code: str | None, *, idempotent: bool) -> Kind:
    # Neon-style limits (``422 BRANCHES_LIMIT_EXCEEDED``) are "not now" like the named ones.
    if code in RETRY_CODES or status in RETRY_STATUSES or (code or "").endswith("_LIMIT_EXCEEDED"):
        return Kind.RETRY
    if code in EXISTS_CODES:
        return Kind.EXISTS
    if status == 401 or code == "UNAUTHENTICATED":
        return Kind.UNAUTHENTICATED
    if status == 403 or code == "PERMISSION_DENIED":
        return Kind.PERMISSION_DENIED
    if status == 404 or code in NOT_FOUND_CODES:
        return Kind.NOT_FOUND
    if status == 409 or code == "RESOURCE_CONFLICT":
        return Kind.EXISTS
    if status == 501 or code == "NOT_IMPLEMENTED":
        return Kind.UNSUPPORTED
    if idempotent and ((status is not None and status >= 500) or code in READ_RETRY_CODES):
        return Kind.RETRY
    if status is not None and 400 <= status < 500 and status not in (408, 499):
        return Kind.BAD_REQUEST
    return Kind.OTHER


def as_error(failure: Failure, *, what: str, project: str, permission: str = "CAN MANAGE") -> DbBranchError:
    """The package error for a failure nobody retries or handles: says what to fix.
    ``permission`` is the project permission ``what`` needs (CAN USE for reads and
    credentials, CAN MANAGE for changing branches and endpoints)."""
    detail = failure.describe()
    kind = failure.kind
    if kind is Kind.UNAUTHENTICATED:
        return ServerError(f"Lakebase rejected the credentials trying to {what} ({detail}); {_REFRESH_HINT}")
    if kind is Kind.PERMISSION_DENIED:
        return ServerError(
            f"Lakebase refused to {what} ({detail}); the Databricks identity in use needs {permission} "
            f"on {project} (project permissions in the Lakebase UI, or the permissions API)"
        )
    if kind is Kind.EXISTS:
        return BranchExistsError(f"Lakebase: cannot {what}: it already exists ({detail})")
    if kind is Kind.NOT_FOUND:
        return DbBranchError(
            f"Lakebase: cannot {what}: not found ({detail}); check the project and branch names"
        )
    if kind is Kind.BAD_REQUEST:
        return DbBranchError(f"Lakebase rejected the request to {what} ({detail})")
    if kind is Kind.UNSUPPORTED:
        return DbBranchError(
            f"Lakebase does not offer the call to {what} here ({detail}); upgrade databricks-sdk, or "
            "check that the workspace has Lakebase Autoscaling"
        )
    if kind is Kind.RETRY:
        return ServerError(f"Lakebase kept refusing to {what} ({detail}); the project is busy or at a limit")
    return ServerError(f"Lakebase failed to {what} ({detail})")
