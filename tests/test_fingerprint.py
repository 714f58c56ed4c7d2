"""Unit tests for template fingerprints, project keys and the tag written on databases."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_dbbranch.backends.base import TOOL, Tag
from pytest_dbbranch.branching.fingerprint import fingerprint, template_group
from pytest_dbbranch.names import NAME_RE, template_name

FILES = {
    "env.py": "from alembic import context\nrun_migrations()\n",
    "script.py.mako": "revision = ${repr(up_revision)}\n",
    "versions/0001_create_items.py": "revision = '0001'\ndown_revision = None\n",
    "versions/0002_add_price.py": "revision = '0002'\ndown_revision = '0001'\n",
}
INI = "[alembic]\nscript_location = migrations\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def make_project(root: Path, files: dict[str, str] | None = None, ini: str = INI) -> Path:
    for relative, text in (files or FILES).items():
        path = root / "migrations" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "alembic.ini").write_text(ini)
    return root


def alembic_files(root: Path) -> list[tuple[str, Path]]:
    base = root / "migrations"
    return [(p.relative_to(base).as_posix(), p) for p in base.rglob("*") if p.is_file()]


def inputs(root: Path, **changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "source_identity": "dump:sha256:abc",
        "revisions": ["0002"],
        "server_version": 16,
        "alembic_files": alembic_files(root),
        "alembic_ini": root / "alembic.ini",
    }
    kwargs.update(changes)
    return kwargs


# ------------------------------------------------------------------------------ stability


def test_fingerprint_is_a_hex_digest_usable_in_template_names(project: Path) -> None:
    fp = fingerprint(**inputs(project))
    assert len(fp) == 64
    assert all(c in "0123456789abcdef" for c in fp)
    assert NAME_RE.fullmatch(template_name(template_group("a", "b"), fp))


def test_equal_inputs_give_equal_fingerprints(project: Path) -> None:
    assert fingerprint(**inputs(project)) == fingerprint(**inputs(project))


def test_identical_copy_elsewhere_gives_the_same_fingerprint(project: Path, tmp_path: Path) -> None:
    # Another checkout (another CI job, another developer) must find the same template.
    copy = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(project, copy)
    assert fingerprint(**inputs(project)) == fingerprint(**inputs(copy))


@pytest.mark.parametrize("seed", range(5))
def test_order_of_files_does_not_matter(project: Path, seed: int) -> None:
    files = alembic_files(project)
    shuffled = files[:]
    random.Random(seed).shuffle(shuffled)
    assert fingerprint(**inputs(project, alembic_files=files)) == fingerprint(
        **inputs(project, alembic_files=shuffled)
    )
    assert fingerprint(**inputs(project, alembic_files=files)) == fingerprint(
        **inputs(project, alembic_files=list(reversed(files)))
    )


def test_files_may_be_any_iterable(project: Path) -> None:
    files = alembic_files(project)
    assert fingerprint(**inputs(project, alembic_files=iter(files))) == fingerprint(
        **inputs(project, alembic_files=tuple(files))
    )


def test_order_of_revisions_does_not_matter(project: Path) -> None:
    a = fingerprint(**inputs(project, revisions=["0002", "0003b"]))
    b = fingerprint(**inputs(project, revisions=("0003b", "0002")))
    c = fingerprint(**inputs(project, revisions=iter(["0003b", "0002"])))
    assert a == b == c


def test_fingerprint_is_stable_across_processes(project: Path) -> None:
    """Same value in a fresh interpreter with another hash seed (no use of ``hash()``)."""
    files = [(rel, str(path)) for rel, path in alembic_files(project)]
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from pytest_dbbranch.branching.fingerprint import fingerprint, template_group\n"
        "from pytest_dbbranch.names import template_name\n"
        "files = [(r, Path(p)) for r, p in json.loads(sys.argv[1])]\n"
        "fp = fingerprint(source_identity='dump:sha256:abc', revisions=['0002'], server_version=16,\n"
        "                 alembic_files=files, alembic_ini=Path(sys.argv[2]))\n"
        "key = template_group('ini', 'src', 'head')\n"
        "print(json.dumps([fp, key, template_name(key, fp)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(files), str(project / "alembic.ini")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    fp, key, name = json.loads(result.stdout)
    here_fp = fingerprint(**inputs(project))
    here_key = template_group("ini", "src", "head")
    assert [fp, key, name] == [here_fp, here_key, template_name(here_key, here_fp)]


# ---------------------------------------------------------------------------- sensitivity


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_identity", "dump:sha256:abd"),
        ("source_identity", "db:prod"),
        ("source_identity", ""),
        ("revisions", ["0001"]),
        ("revisions", ["0002", "0003"]),
        ("revisions", []),
        ("server_version", 17),
        ("server_version", 160),
        ("alembic_ini", None),
    ],
)
def test_each_scalar_input_changes_the_fingerprint(project: Path, field: str, value: Any) -> None:
    assert fingerprint(**inputs(project)) != fingerprint(**inputs(project, **{field: value}))


@pytest.mark.parametrize("relative", sorted(FILES))
def test_changing_any_alembic_file_changes_the_fingerprint(project: Path, relative: str) -> None:
    before = fingerprint(**inputs(project))
    path = project / "migrations" / relative
    text = path.read_text()
    # Same length, one character different: the content itself must count, not its size.
    path.write_text(text[:-2] + ("X" if text[-2] != "X" else "Y") + text[-1])
    assert fingerprint(**inputs(project)) != before


@pytest.mark.parametrize("relative", sorted(FILES))
def test_changing_file_content_only_at_the_end_changes_the_fingerprint(project: Path, relative: str) -> None:
    before = fingerprint(**inputs(project))
    with (project / "migrations" / relative).open("a") as handle:
        handle.write(" ")
    assert fingerprint(**inputs(project)) != before


def test_a_new_file_changes_the_fingerprint(project: Path) -> None:
    before = fingerprint(**inputs(project))
    (project / "migrations" / "versions" / "0003_new.py").write_text("revision = '0003'\n")
    assert fingerprint(**inputs(project)) != before


def test_a_new_empty_file_changes_the_fingerprint(project: Path) -> None:
    before = fingerprint(**inputs(project))
    (project / "migrations" / "versions" / "__init__.py").write_text("")
    assert fingerprint(**inputs(project)) != before


def test_a_removed_file_changes_the_fingerprint(project: Path) -> None:
    before = fingerprint(**inputs(project))
    (project / "migrations" / "versions" / "0002_add_price.py").unlink()
    assert fingerprint(**inputs(project)) != before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("versions/0002_add_price.py", "versions/0002_add_cost.py"),
        ("versions/0002_add_price.py", "versions/old/0002_add_price.py"),
        ("env.py", "Env.py"),
    ],
)
def test_a_renamed_file_changes_the_fingerprint(project: Path, old: str, new: str) -> None:
    before = fingerprint(**inputs(project))
    source = project / "migrations" / old
    target = project / "migrations" / new
    target.parent.mkdir(parents=True, exist_ok=True)
    content = source.read_bytes()
    source.unlink()
    target.write_bytes(content)
    assert fingerprint(**inputs(project)) != before


def test_swapping_contents_between_files_changes_the_fingerprint(project: Path) -> None:
    before = fingerprint(**inputs(project))
    a = project / "migrations" / "versions" / "0001_create_items.py"
    b = project / "migrations" / "versions" / "0002_add_price.py"
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)
    assert fingerprint(**inputs(project)) != before


def test_moving_bytes_across_a_file_boundary_changes_the_fingerprint(tmp_path: Path) -> None:
    one = make_project(tmp_path / "one", {"a.py": "ab", "b.py": "c"})
    two = make_project(tmp_path / "two", {"a.py": "a", "b.py": "bc"})
    assert fingerprint(**inputs(one)) != fingerprint(**inputs(two))


def test_file_name_and_content_are_not_confused(tmp_path: Path) -> None:
    one = make_project(tmp_path / "one", {"ab": "c"})
    two = make_project(tmp_path / "two", {"a": "bc"})
    assert fingerprint(**inputs(one)) != fingerprint(**inputs(two))


def test_alembic_ini_content_changes_the_fingerprint(project: Path) -> None:
    before = fingerprint(**inputs(project))
    (project / "alembic.ini").write_text(INI + "sqlalchemy.url = driver://x\n")
    assert fingerprint(**inputs(project)) != before


def test_empty_alembic_ini_differs_from_no_alembic_ini(project: Path) -> None:
    (project / "alembic.ini").write_text("")
    assert fingerprint(**inputs(project)) != fingerprint(**inputs(project, alembic_ini=None))


def test_ini_content_is_not_confused_with_a_file(tmp_path: Path) -> None:
    # The same bytes as alembic.ini or as a migration file are different inputs.
    one = make_project(tmp_path / "one", {"x.py": "same"}, ini="")
    two = make_project(tmp_path / "two", {"x.py": ""}, ini="same")
    assert fingerprint(**inputs(one)) != fingerprint(**inputs(two))


def test_revisions_boundaries_are_not_confused(project: Path) -> None:
    assert fingerprint(**inputs(project, revisions=["ab", "c"])) != fingerprint(
        **inputs(project, revisions=["a", "bc"])
    )


def test_source_and_revision_are_not_confused(project: Path) -> None:
    a = fingerprint(**inputs(project, source_identity="x", revisions=["y"]))
    b = fingerprint(**inputs(project, source_identity="y", revisions=["x"]))
    assert a != b


def test_many_single_changes_give_many_distinct_fingerprints(project: Path) -> None:
    seen = {fingerprint(**inputs(project))}
    for version in range(100, 120):
        seen.add(fingerprint(**inputs(project, server_version=version)))
    for i in range(20):
        seen.add(fingerprint(**inputs(project, source_identity=f"db:prod{i}")))
        seen.add(fingerprint(**inputs(project, revisions=[f"r{i:04d}"])))
    assert len(seen) == 1 + 20 + 20 + 20


# ---------------------------------------------------------------------------- template_group


def test_template_group_is_deterministic_short_hex() -> None:
    key = template_group("/srv/app/alembic.ini", "db:prod", "head")
    assert key == template_group("/srv/app/alembic.ini", "db:prod", "head")
    assert len(key) == 10
    assert all(c in "0123456789abcdef" for c in key)


@pytest.mark.parametrize("index", range(3))
def test_template_group_differs_by_each_part(index: int) -> None:
    parts = ["/srv/app/alembic.ini", "db:prod", "head"]
    changed = parts[:]
    changed[index] += "x"
    assert template_group(*parts) != template_group(*changed)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("ab", "c"), ("a", "bc")),
        (("a",), ("a", "")),
        (("a", "b"), ("b", "a")),
        (("",), ("", "")),
        (("a b",), ("a", "b")),
    ],
)
def test_template_group_keeps_parts_apart(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert template_group(*a) != template_group(*b)


def test_template_groups_do_not_collide() -> None:
    keys = {template_group(f"/srv/app{i}/alembic.ini", "db:prod", "head") for i in range(1000)}
    assert len(keys) == 1000


# ------------------------------------------------------------------------------------ Tag


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


@pytest.mark.parametrize(
    "tag",
    [
        make_tag(),
        make_tag(kind="branch", ready=True, kept=True),
        make_tag(kind="source", fingerprint="", group=""),
        make_tag(run="r\"u'n\\", parent="ünïcødé 🎉", host="h\nost", created=0.1 + 0.2),
        Tag(kind="branch", run="abc", parent="dbbt-x"),
    ],
    ids=["template", "branch", "source", "odd-text", "defaults"],
)
def test_tag_round_trips_through_dumps_and_loads(tag: Tag) -> None:
    text = tag.dumps()
    loaded = Tag.loads(text)
    assert loaded == tag
    assert isinstance(loaded, Tag)
    assert json.loads(text)["tool"] == TOOL


def test_tag_dumps_is_deterministic_json() -> None:
    assert make_tag().dumps() == make_tag().dumps()
    data = json.loads(make_tag(kind="branch").dumps())
    assert data["kind"] == "branch"
    assert data["run"] == "abc12345"


def test_tag_default_fields_are_filled() -> None:
    tag = Tag(kind="branch", run="abc", parent="p")
    assert tag.tool == TOOL
    assert tag.ready is False
    assert tag.pid == os.getpid()
    assert isinstance(tag.created, float)


@pytest.mark.parametrize(
    "text",
    [
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
        json.dumps({**json.loads(make_tag().dumps()), "tool": "other-tool"}),
        json.dumps({**json.loads(make_tag().dumps()), "tool": "PYTEST-DBBRANCH"}),
        json.dumps({**json.loads(make_tag().dumps()), "tool": None}),
        json.dumps({k: v for k, v in json.loads(make_tag().dumps()).items() if k != "tool"}),
        json.dumps({"tool": TOOL}),  # ours, but missing required fields
        json.dumps({"tool": TOOL, "kind": "branch"}),
    ],
    ids=lambda t: repr(t)[:40],
)
def test_loads_returns_none_for_anything_that_is_not_our_tag(text: str | None) -> None:
    assert Tag.loads(text) is None


def test_loads_ignores_unknown_fields_from_a_newer_version() -> None:
    data = {**json.loads(make_tag().dumps()), "future_field": [1, 2, 3]}
    assert Tag.loads(json.dumps(data)) == make_tag()


def test_loads_tolerates_missing_optional_fields() -> None:
    loaded = Tag.loads(json.dumps({"tool": TOOL, "kind": "branch", "run": "r", "parent": "p"}))
    assert loaded is not None
    assert (loaded.kind, loaded.run, loaded.parent, loaded.ready) == ("branch", "r", "p", False)


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
