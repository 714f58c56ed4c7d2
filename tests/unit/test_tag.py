"""The tag written on every branch we create.

Destructive operations read it back first, so it must survive a round trip exactly, and
anything that is not our tag (a colleague's comment, another tool's JSON, a half-written
value) must read as "not ours".
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest

from pytest_dbbranch.backends.base import TOOL, Tag


def make_tag(**changes: Any) -> Tag:
    values: dict[str, Any] = {
        "kind": "template",
        "run": "abc12345",
        "parent": "dbbs-0123456789abcdef0123",
        "fingerprint": "f" * 64,
        "group": "0123456789",
        "ready": False,
        "kept": False,
        "created": 1_700_000_000.123456,
        "host": "ci-runner-7",
        "pid": 4242,
    }
    values.update(changes)
    return Tag(**values)


def test_tag_round_trips_through_dumps_and_loads() -> None:
    tags = {
        "template": make_tag(),
        "branch": make_tag(kind="branch", ready=True, kept=True),
        "source": make_tag(kind="source", fingerprint="", group=""),
        "odd text": make_tag(run="r\"u'n\\", parent="ünïcødé 🎉", host="h\nost", created=0.1 + 0.2),
        "defaults": Tag(kind="branch", run="abc", parent="dbbt-x"),
    }
    for label, tag in tags.items():
        text = tag.dumps()
        loaded = Tag.loads(text)
        assert isinstance(loaded, Tag), label
        assert loaded == tag, label
        assert json.loads(text)["tool"] == TOOL, label


def test_tag_dumps_is_deterministic_json() -> None:
    """Plain JSON, the same text for the same tag: people read it in ``\\l+``."""
    assert make_tag().dumps() == make_tag().dumps()
    data = json.loads(make_tag(kind="branch").dumps())
    assert (data["kind"], data["run"], data["group"]) == ("branch", "abc12345", "0123456789")


def test_tag_default_fields_describe_this_process() -> None:
    tag = Tag(kind="branch", run="abc", parent="p")
    assert tag.tool == TOOL
    assert tag.ready is False and tag.kept is False
    assert tag.pid == os.getpid()
    assert isinstance(tag.created, float)


def test_loads_returns_none_for_anything_that_is_not_our_tag() -> None:
    ours = json.loads(make_tag().dumps())
    foreign: list[str | None] = [
        None,
        "",
        "production database, do not touch",
        "Owned by the billing team. Contact: dba@example.com",
        "{not json",
        '{"tool": "pytest-dbbranch"',
        "null",
        "42",
        "[]",
        '["pytest-dbbranch"]',
        '"pytest-dbbranch"',
        "{}",
        json.dumps({"kind": "branch", "run": "r", "parent": "p"}),
        json.dumps({**ours, "tool": "other-tool"}),
        json.dumps({**ours, "tool": "PYTEST-DBBRANCH"}),
        json.dumps({**ours, "tool": None}),
        json.dumps({k: v for k, v in ours.items() if k != "tool"}),
        json.dumps({"tool": TOOL}),  # ours, but missing required fields
        json.dumps({"tool": TOOL, "kind": "branch"}),
    ]
    assert [text for text in foreign if Tag.loads(text) is not None] == []


def test_loads_accepts_tags_of_other_versions() -> None:
    """A newer version may add fields, an older one may lack optional ones: both still ours."""
    newer = {**json.loads(make_tag().dumps()), "future_field": [1, 2, 3]}
    assert Tag.loads(json.dumps(newer)) == make_tag()
    older = Tag.loads(json.dumps({"tool": TOOL, "kind": "branch", "run": "r", "parent": "p"}))
    assert older is not None
    assert (older.kind, older.run, older.parent, older.ready) == ("branch", "r", "p", False)


def test_sealed_sets_ready_and_keeps_everything_else() -> None:
    tag = make_tag(ready=False)
    sealed = tag.sealed()
    assert sealed.ready is True
    assert tag.ready is False  # the original is not modified
    assert dataclasses.replace(sealed, ready=False) == tag
    assert sealed.sealed() == sealed
    assert Tag.loads(sealed.dumps()) == sealed


def test_tag_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_tag().ready = True  # type: ignore[misc]
