"""The schema diff a pull request makes (``review.schema_diff``), in process and through
``dbbranch diff``, on the example project: its production snapshot against its migrations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_dbbranch import cli
from pytest_dbbranch.review import schema_diff
from pytest_dbbranch.schema import render_json, render_markdown
from pytest_dbbranch.settings import Settings
from tests.helpers import EXAMPLE, copy_example, our_branches
from tests.integration.support import MakeManager


@pytest.fixture
def example(tmp_path: Path, clean_embedded: str) -> Path:
    """A copy of the example application; its pyproject.toml names the snapshot and alembic.ini."""
    folder = tmp_path / "inventory"
    folder.mkdir()
    copy_example(folder)
    return folder


def dbbranch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["diff", *args])
    return code, capsys.readouterr().out


def test_schema_diff_in_process(make_manager: MakeManager, example: Path, settings: Settings) -> None:
    """The JSON a CI job posts: the renamed column is one breaking removal, and reading both
    schemas left no branch behind."""
    manager = make_manager(source="snapshot.sql", alembic_ini="alembic.ini", root=example)
    diff = schema_diff(manager)
    data = json.loads(render_json(diff))
    assert data["summary"] == {"changes": 6, "breaking": 5}
    removed = [c for c in data["changes"] if c["action"] == "removed"]
    assert [(c["kind"], c["name"], c["breaking"]) for c in removed] == [("column", "inventory_code", True)]
    assert our_branches(str(settings.url)) == []


def test_cli_diff(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, example: Path, clean_embedded: str
) -> None:
    """Settings come from the project's pyproject.toml; the markdown is exactly what the
    README shows; breaking changes fail the command only when asked."""
    monkeypatch.chdir(example)
    code, markdown = dbbranch(capsys, "--url", clean_embedded)
    assert code == 0
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    shown = readme.split("<!-- example-diff -->\n", 1)[1].split("\n<!-- /example-diff -->", 1)[0]
    assert markdown.strip() == shown.strip()
    assert "⚠️ **6 changes, 5 breaking**" in markdown
    assert dbbranch(capsys, "--url", clean_embedded, "--fail-on-breaking")[0] == 1
    code, as_json = dbbranch(capsys, "--url", clean_embedded, "--format", "json")
    assert code == 0 and len(json.loads(as_json)["changes"]) == 6
    assert dbbranch(capsys, "--url", clean_embedded, "--output", "pr.md") == (0, "")
    assert (example / "pr.md").read_text() == markdown
    assert our_branches(clean_embedded) == []


def test_no_changes(
    make_manager: MakeManager,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No migrations and no source: the template is the empty database, and the report says
    there is nothing to review (and nothing breaking)."""
    folder = tmp_path / "empty-project"
    folder.mkdir()
    manager = make_manager(alembic_ini="none", root=folder)
    diff = schema_diff(manager)
    assert diff.empty
    assert "No schema changes" in render_markdown(diff)
    monkeypatch.chdir(folder)
    code, text = dbbranch(capsys, "--url", str(manager.settings.url), "--fail-on-breaking")
    assert code == 0 and "No schema changes" in text
