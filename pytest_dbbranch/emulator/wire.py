"""How the emulator's REST API spells values in JSON, and how it says no.

The SDK parses these exactly as protobuf's JSON mapping writes them, so the spellings here are
part of the contract, not a matter of taste.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


class ApiError(Exception):
    """Carries the status and ``error_code`` the SDK needs to pick its exception class."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a 'Z', as protobuf's JSON mapping (and so the SDK) expects."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object, what: str) -> datetime:
    match = _TIMESTAMP.match(text) if isinstance(text, str) else None
    if match is None:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{what} must be an RFC 3339 timestamp, got {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")


def parse_api_duration(text: object, what: str) -> timedelta:
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"{what} must be a duration like '3600s', got {text!r}"
        )
    return timedelta(seconds=float(match.group(1)))


def format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        offset = int(text.removeprefix("offset:")) if text.startswith("offset:") else -1
    except ValueError:
        offset = -1
    if offset < 0:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"invalid page_token {token!r}")
    return offset


def json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise ApiError(400, "MALFORMED_REQUEST", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "the request body must be a JSON object")
    return data
