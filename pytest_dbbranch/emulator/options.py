"""The emulator's behaviour switches, one per known difference from the real service.

Each defaults to what the service does (or, where that is unverified, to the stricter reading
of its documentation), and each can be turned back to the emulator's older, simpler behaviour,
so a suite can tell which difference it trips over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

Timing = Literal["realistic", "fast"]
HostStyle = Literal["auto", "loopback", "single"]
TtlWithChildren = Literal["refuse-child", "refuse-ttl", "allow"]
LimitError = Literal["request", "operation"]
Storage = Literal["cluster", "database"]


@dataclass(frozen=True)
class Behaviour:
    #: Seconds an operation takes: a fixed value or a (low, high) range drawn per operation.
    operation_delay: tuple[float, float] = (1.0, 1.5)
    #: Seconds between a branch (or endpoint) being ready and its compute having a host.
    compute_start_delay: float = 0.5
    #: Seconds without traffic before a compute suspends and closes its sessions (None: never).
    suspend_timeout: float | None = 300.0
    #: Seconds the first login to a suspended compute waits while it wakes.
    cold_start_delay: float = 0.3
    #: Every branch gets a ``primary`` read-write endpoint (False: the older "none" behaviour).
    auto_endpoint: bool = True
    #: "loopback": 127.0.0.N:5432 per endpoint; "single": one printed port for all; "auto":
    #: loopback where the machine allows it.
    host_style: HostStyle = "auto"
    #: Logins without TLS are refused, as on Lakebase.
    tls_required: bool = True
    #: ``delete_branch`` without ``purge`` keeps the branch, listed with ``show_deleted``.
    soft_delete: bool = True
    #: At most one protected branch per project, and no TTL on protected or default branches.
    branch_rules: bool = True
    #: A branch with children and an expiry: refuse the child ("refuse-child", which also
    #: refuses adding an expiry to a parent), refuse only adding the expiry ("refuse-ttl"), or
    #: allow both and postpone the parent's expiry ("allow").
    ttl_with_children: TtlWithChildren = "refuse-child"
    #: Unarchived branches per project, production included.
    branch_limit: int = 10
    #: The limit refuses the create request itself ("request") or fails its operation.
    limit_error: LimitError = "request"
    #: Default lifetime of a database credential, in seconds.
    credential_lifetime: float = 3600.0

    def draw_operation_delay(self) -> float:
        low, high = self.operation_delay
        return low if high <= low else random.uniform(low, high)


REALISTIC = Behaviour()
#: The older timing: near-instant operations and computes that never sleep.
FAST = replace(
    REALISTIC,
    operation_delay=(0.05, 0.05),
    compute_start_delay=0.0,
    suspend_timeout=None,
    cold_start_delay=0.0,
)


def as_range(value: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, tuple):
        low, high = value
        return (float(low), float(high))
    return (float(value), float(value))
