"""Shared fixtures for the inventory example tests."""

from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class SnapshotFacts:
    """What snapshot.sql contains once it has been migrated to head.

    Hard-coded on purpose: if a test changes the data and the change leaks into
    another test's branch, these numbers stop matching.
    """

    item_count: int = 3000
    location_count: int = 5
    stock_by_location: dict[str, int] = field(
        default_factory=lambda: {
            "WH01": 6000,
            "WH02": 7800,
            "WH03": 6600,
            "WH04": 8400,
            "WH05": 7200,
        }
    )
    snapshot_revision: str = "0001"
    head_revision: str = "0003"


@pytest.fixture(scope="session")
def snapshot_facts() -> SnapshotFacts:
    return SnapshotFacts()
