"""Classification of Lakebase failures, from errors built the way databricks-sdk builds them:
a ``requests.Response`` through the SDK's own error parser (deserializers, customizers and
status/code mapper), with and without our status capture."""

from __future__ import annotations

import json

import pytest
import requests
from databricks.sdk import errors as sdk_errors
from databricks.sdk.errors.base import DatabricksError
from databricks.sdk.errors.parser import _Parser
from databricks.sdk.service.postgres import ErrorCode

from pytest_dbbranch.backends.lakebase_errors import (
    Kind,
    StatusCapture,
    as_error,
    classify,
    classify_operation,
    clean_message,
    http_status,
    redact,
)
from pytest_dbbranch.errors import BranchExistsError, DbBranchError, ServerError

PATH = "/api/2.0/postgres/projects/demo/branches"


def sdk_error(
    status: int,
    body: dict[str, object] | str,
    *,
    method: str = "POST",
    captured: bool = True,
    headers: dict[str, str] | None = None,
) -> DatabricksError:
    response = requests.Response()
    response.status_code = status
    response._content = (json.dumps(body) if isinstance(body, dict) else body).encode()
    response.headers.update(headers or {})
    response.reason = "Reason"
    response.request = requests.Request(method, f"https://example.cloud.databricks.com{PATH}").prepare()
    response.url = str(response.request.url)
    parser = _Parser(extra_error_customizers=[StatusCapture()] if captured else [])
    error = parser.get_api_error(response)
    assert error is not None
    return error


def body(code: str | None, message: str = "the service says no") -> dict[str, object]:
    return {"error_code": code, "message": message} if code else {"message": message}


@pytest.mark.parametrize(
    ("status", "code", "sdk_class"),
    [
        (400, "QUOTA_EXCEEDED", sdk_errors.BadRequest),
        (400, "RESOURCE_LIMIT_EXCEEDED", sdk_errors.BadRequest),
        (422, "BRANCHES_LIMIT_EXCEEDED", DatabricksError),
        (429, "RESOURCE_EXHAUSTED", sdk_errors.ResourceExhausted),
        (429, "REQUEST_LIMIT_EXCEEDED", sdk_errors.RequestLimitExceeded),
        (409, "ABORTED", sdk_errors.Aborted),
        (409, "COULD_NOT_ACQUIRE_LOCK", sdk_errors.ResourceConflict),
        (423, "LOCKED", DatabricksError),
        (423, None, DatabricksError),
        (503, "TEMPORARILY_UNAVAILABLE", sdk_errors.TemporarilyUnavailable),
        (503, "UNAVAILABLE", sdk_errors.TemporarilyUnavailable),
    ],
)
def test_refusals_that_mean_not_now_are_retried(status: int, code: str | None, sdk_class: type) -> None:
    error = sdk_error(status, body(code))
    assert type(error) is sdk_class, "the SDK's own mapping, as the plugin meets it"
    failure = classify(error, idempotent=False)
    assert (failure.kind, failure.status, failure.code) == (Kind.RETRY, status, code)


def test_the_status_of_a_bare_error_is_known_only_when_captured() -> None:
    """423 has no SDK class: without our capture the status is lost, and nothing says retry."""
    assert http_status(sdk_error(423, body("LOCKED"))) == 423
    uncaptured = sdk_error(423, body("LOCKED"), captured=False)
    assert http_status(uncaptured) is None
    assert classify(uncaptured, idempotent=False).kind is Kind.OTHER
    # A class that only one status maps to still tells it.
    assert http_status(sdk_error(409, body("ALREADY_EXISTS"), captured=False)) == 409
    assert http_status(sdk_error(503, body(None), captured=False)) == 503


@pytest.mark.parametrize("code", ["ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT", None])
def test_conflicts_are_existence_to_confirm(code: str | None) -> None:
    failure = classify(sdk_error(409, body(code)), idempotent=False)
    assert failure.kind is Kind.EXISTS
    assert isinstance(as_error(failure, what="create branch x", project="projects/demo"), BranchExistsError)


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "INTERNAL_ERROR"), (502, "BAD_GATEWAY"), (504, "DEADLINE_EXCEEDED"), (500, None)],
)
def test_server_errors_are_retried_for_reads_only(status: int, code: str | None) -> None:
    assert classify(sdk_error(status, body(code), method="GET"), idempotent=True).kind is Kind.RETRY
    assert classify(sdk_error(status, body(code)), idempotent=False).kind is Kind.OTHER


def test_an_html_gateway_page_keeps_its_status() -> None:
    error = sdk_error(502, "<html><title>502 Bad Gateway</title></html>", method="GET")
    failure = classify(error, idempotent=True)
    assert (failure.kind, failure.status) == (Kind.RETRY, 502)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (404, "NOT_FOUND", Kind.NOT_FOUND),
        (404, "RESOURCE_DOES_NOT_EXIST", Kind.NOT_FOUND),
        (400, "INVALID_PARAMETER_VALUE", Kind.BAD_REQUEST),
        (400, "FAILED_PRECONDITION", Kind.BAD_REQUEST),
        (501, "NOT_IMPLEMENTED", Kind.UNSUPPORTED),
        (401, "UNAUTHENTICATED", Kind.UNAUTHENTICATED),
        (403, "PERMISSION_DENIED", Kind.PERMISSION_DENIED),
    ],
)
def test_final_answers(status: int, code: str, kind: Kind) -> None:
    assert classify(sdk_error(status, body(code)), idempotent=True).kind is kind


def test_an_unauthenticated_error_says_how_to_refresh_the_token() -> None:
    # The SDK appends its configuration to 401/403 messages (Config.wrap_debug_info).
    message = "Invalid access token. Config: host=https://x, token=***, auth_type=pat. Env: DATABRICKS_TOKEN"
    failure = classify(sdk_error(401, body("UNAUTHENTICATED", message)), idempotent=True)
    error = as_error(failure, what="read branch b", project="projects/demo")
    text = str(error)
    assert isinstance(error, ServerError)
    assert "[401 UNAUTHENTICATED] Invalid access token" in text
    assert "DATABRICKS_TOKEN" in text and "databricks auth login" in text and "profile" in text
    assert "Config:" not in text and "auth_type" not in text


def test_a_permission_error_names_the_permission_and_project() -> None:
    failure = classify(sdk_error(403, body("PERMISSION_DENIED")), idempotent=False)
    text = str(as_error(failure, what="create branch b", project="projects/demo"))
    assert "needs CAN MANAGE on projects/demo" in text
    text = str(as_error(failure, what="list branches", project="projects/demo", permission="CAN USE"))
    assert "needs CAN USE on projects/demo" in text


def test_the_sdk_giving_up_is_transient() -> None:
    try:
        try:
            raise sdk_error(429, body("REQUEST_LIMIT_EXCEEDED"), headers={"Retry-After": "7"})
        except DatabricksError as inner:
            assert inner.retry_after_secs == 7
            raise TimeoutError("Timed out after 0:01:00") from inner
    except TimeoutError as exc:
        failure = classify(exc, idempotent=False)
    assert (failure.kind, failure.status, failure.retry_after) == (Kind.RETRY, 429, None)
    lost = TimeoutError("Timed out after 0:01:00")
    lost.__cause__ = requests.ConnectionError("connection reset by peer")
    assert classify(lost, idempotent=False).kind is Kind.RETRY


def test_retry_after_is_kept_when_the_sdk_did_not_wait() -> None:
    failure = classify(sdk_error(503, body(None), headers={"Retry-After": "3"}), idempotent=True)
    assert failure.retry_after == 3.0


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("RESOURCE_EXHAUSTED", Kind.RETRY),
        (ErrorCode.QUOTA_EXCEEDED, Kind.RETRY),
        (ErrorCode.ABORTED, Kind.RETRY),
        ("ALREADY_EXISTS", Kind.EXISTS),
        ("NOT_FOUND", Kind.NOT_FOUND),
        ("INVALID_PARAMETER_VALUE", Kind.OTHER),
        (None, Kind.OTHER),
    ],
)
def test_failed_operations_by_code(code: object, kind: Kind) -> None:
    failure = classify_operation(code, "message")
    assert failure.kind is kind and failure.status is None
    assert failure.code == (getattr(code, "value", code) or "UNKNOWN")


def test_messages_carry_no_secrets() -> None:
    text = redact(
        "refused dapi0123456789abcdef0123 with Authorization: Bearer abc.def.ghi; "
        'body {"token": "s3cr3t-value"} and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig password=hunter2'
    )
    for secret in ("dapi0123456789abcdef0123", "abc.def.ghi", "s3cr3t-value", "eyJhbGci", "hunter2"):
        assert secret not in text, text
    error = sdk_error(400, body("INVALID_PARAMETER_VALUE", "bad token=dapi0123456789abcdef0123"))
    assert "dapi0123456789abcdef0123" not in clean_message(error)


def test_every_kind_becomes_a_package_error() -> None:
    for kind in Kind:
        from pytest_dbbranch.backends.lakebase_errors import Failure

        error = as_error(Failure(kind, 400, "X", "m"), what="do it", project="projects/demo")
        assert isinstance(error, DbBranchError) and "do it" in str(error)
