"""Template fingerprints and groups.

The fingerprint is the template's name: if any input changes it must change (a stale template
is never used by mistake), and if nothing changed it must not (every checkout, process and
machine finds the same template). Groups tell which templates replace each other.
"""

from __future__ import annotations

import configparser
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_dbbranch.branching.fingerprint import fingerprint, template_group
from pytest_dbbranch.names import NAME_RE, template_name

FILES = {
    "env.py": "from alembic import context\nrun_migrations()\n",
    "script.py.mako": "revision = ${repr(up_revision)}\n",
    "versions/0001_create_items.py": "revision = '0001'\ndown_revision = None\n",
    "versions/0002_add_price.py": "revision = '0002'\ndown_revision = '0001'\n",
}
INI = "[alembic]\nscript_location = migrations\n"


def make_project(root: Path, files: dict[str, str] | None = None, ini: str = INI) -> Path:
    for relative, text in (files or FILES).items():
        path = root / "migrations" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "alembic.ini").write_text(ini)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def alembic_files(root: Path) -> list[tuple[str, Path]]:
    base = root / "migrations"
    return [(p.relative_to(base).as_posix(), p) for p in base.rglob("*") if p.is_file()]


def ini_values(root: Path) -> list[tuple[str, str]]:
    """What ``AlembicMigrator.settings_text`` reads: [alembic] as written, minus the URL."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / "alembic.ini")
    if not parser.has_section("alembic"):
        return []
    return sorted((k, v) for k, v in parser.items("alembic") if k != "sqlalchemy.url")


def inputs(root: Path, **changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "source_identity": "dump:sha256:abc",
        "revisions": ["0002"],
        "server_version": 16,
        "role": "app",
        "files": alembic_files(root),
        "ini_values": ini_values(root),
    }
    kwargs.update(changes)
    return kwargs


def fp(root: Path, **changes: Any) -> str:
    return fingerprint(**inputs(root, **changes))


# ------------------------------------------------------------------------------ stability


def test_fingerprint_is_a_hex_digest_usable_in_template_names(project: Path) -> None:
    value = fp(project)
    assert len(value) == 64
    assert all(c in "0123456789abcdef" for c in value)
    assert NAME_RE.fullmatch(template_name(template_group("a", "b"), value))


def test_equal_inputs_give_equal_fingerprints_wherever_the_checkout_is(project: Path, tmp_path: Path) -> None:
    """Another checkout (another CI job, another developer) must find the same template."""
    assert fp(project) == fp(project)
    copy = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(project, copy)
    assert fp(project) == fp(copy)


def test_order_of_files_and_revisions_does_not_matter(project: Path) -> None:
    """Directory listings and Alembic's head lists come in no particular order."""
    files = alembic_files(project)
    expected = fp(project, files=files)
    for seed in range(5):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert fp(project, files=shuffled) == expected, seed
    assert fp(project, files=list(reversed(files))) == expected
    # Any iterable will do, including a one-shot iterator.
    assert fp(project, files=iter(files)) == fp(project, files=tuple(files)) == expected

    a = fp(project, revisions=["0002", "0003b"])
    assert a == fp(project, revisions=("0003b", "0002")) == fp(project, revisions=iter(["0003b", "0002"]))


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
        "                 role='app', files=files, ini_values=json.loads(sys.argv[2]))\n"
        "key = template_group('ini', 'src', 'head')\n"
        "print(json.dumps([fp, key, template_name(key, fp)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(files), json.dumps(ini_values(project))],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    there = json.loads(result.stdout)
    here_key = template_group("ini", "src", "head")
    assert there == [fp(project), here_key, template_name(here_key, fp(project))]


# ---------------------------------------------------------------------------- sensitivity


def test_each_scalar_input_changes_the_fingerprint(project: Path) -> None:
    before = fp(project)
    changes: list[tuple[str, Any]] = [
        ("source_identity", "dump:sha256:abd"),
        ("source_identity", "db:prod"),
        ("source_identity", ""),
        ("revisions", ["0001"]),
        ("revisions", ["0002", "0003"]),
        ("revisions", []),
        ("server_version", 17),
        ("server_version", 160),
        ("role", "other_role"),
        ("role", ""),
        ("ini_values", []),
        ("ini_values", [("script_location", "elsewhere")]),
    ]
    for field, value in changes:
        assert fp(project, **{field: value}) != before, (field, value)


def test_any_edit_of_any_alembic_file_changes_the_fingerprint(project: Path) -> None:
    """The content counts, not its size or date: a one-character edit of the same length and
    a trailing space both change it, and undoing the edit gives the old fingerprint back."""

    def same_length(text: str) -> str:
        return text[:-2] + ("X" if text[-2] != "X" else "Y") + text[-1]

    def appended(text: str) -> str:
        return text + " "

    before = fp(project)
    for relative in sorted(FILES):
        path = project / "migrations" / relative
        original = path.read_text()
        for edit in (same_length, appended):
            path.write_text(edit(original))
            assert fp(project) != before, (relative, edit.__name__)
            path.write_text(original)
            assert fp(project) == before, (relative, edit.__name__)


def _move(old: str, new: str) -> Callable[[Path], None]:
    def move(migrations: Path) -> None:
        target = migrations / new
        target.parent.mkdir(parents=True, exist_ok=True)
        content = (migrations / old).read_bytes()
        (migrations / old).unlink()
        target.write_bytes(content)

    move.__name__ = f"rename {old} to {new}"
    return move


def _write(relative: str, text: str) -> Callable[[Path], None]:
    def write(migrations: Path) -> None:
        (migrations / relative).write_text(text)

    write.__name__ = f"write {relative}"
    return write


def _remove(migrations: Path) -> None:
    (migrations / "versions" / "0002_add_price.py").unlink()


def _swap(migrations: Path) -> None:
    a = migrations / "versions" / "0001_create_items.py"
    b = migrations / "versions" / "0002_add_price.py"
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)


@pytest.mark.parametrize(
    "change",
    [
        _write("versions/0003_new.py", "revision = '0003'\n"),
        _write("versions/__init__.py", ""),  # even an empty file
        _remove,
        _move("versions/0002_add_price.py", "versions/0002_add_cost.py"),
        _move("versions/0002_add_price.py", "versions/old/0002_add_price.py"),
        _move("env.py", "Env.py"),
        _swap,
    ],
    ids=lambda change: change.__name__.strip("_"),
)
def test_adding_removing_renaming_or_swapping_files_changes_the_fingerprint(
    change: Callable[[Path], None], project: Path
) -> None:
    """Which files exist, and under which name each content is, are inputs too."""
    before = fp(project)
    change(project / "migrations")
    assert fp(project) != before


def test_inputs_are_framed_so_they_cannot_run_into_each_other(project: Path, tmp_path: Path) -> None:
    """Two different sets of inputs must never feed the same bytes to the hash: bytes moved
    across a file boundary, a file name against its content, the ini against a file, one
    revision list against another, the source against a revision."""
    pairs = [
        (
            make_project(tmp_path / "1a", {"a.py": "ab", "b.py": "c"}),
            make_project(tmp_path / "1b", {"a.py": "a", "b.py": "bc"}),
        ),
        (make_project(tmp_path / "2a", {"ab": "c"}), make_project(tmp_path / "2b", {"a": "bc"})),
        (
            make_project(tmp_path / "3a", {"x.py": "same"}, ini="[alembic]\nx = \n"),
            make_project(tmp_path / "3b", {"x.py": ""}, ini="[alembic]\nx = same\n"),
        ),
    ]
    for one, two in pairs:
        assert fp(one) != fp(two), (one.name, two.name)
    assert fp(project, revisions=["ab", "c"]) != fp(project, revisions=["a", "bc"])
    assert fp(project, source_identity="x", revisions=["y"]) != fp(
        project, source_identity="y", revisions=["x"]
    )


def test_alembic_ini_values_count_but_not_the_url_or_other_sections(project: Path) -> None:
    """What shapes the schema counts; the URL (replaced by the plugin) and the logging
    sections do not, so checkouts that differ only there share a template."""
    before = fp(project)
    (project / "alembic.ini").write_text(INI + "sqlalchemy.url = driver://x\n[loggers]\nkeys = root\n")
    assert fp(project) == before
    (project / "alembic.ini").write_text(INI + "prepend_sys_path = .\n")
    assert fp(project) != before
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    here = fp(project)
    copy = project.parent / "another-checkout"
    shutil.copytree(project, copy)
    assert fp(copy) == here != before


def test_many_single_changes_give_many_distinct_fingerprints(project: Path) -> None:
    seen = {fp(project)}
    for version in range(100, 120):
        seen.add(fp(project, server_version=version))
    for i in range(20):
        seen.add(fp(project, source_identity=f"db:prod{i}"))
        seen.add(fp(project, revisions=[f"r{i:04d}"]))
    assert len(seen) == 1 + 20 + 20 + 20


# ---------------------------------------------------------------------------- template_group


def test_template_group_is_deterministic_short_hex() -> None:
    key = template_group("/srv/app/alembic.ini", "db:prod", "head")
    assert key == template_group("/srv/app/alembic.ini", "db:prod", "head")
    assert len(key) == 10
    assert all(c in "0123456789abcdef" for c in key)


def test_template_group_differs_by_each_part_and_keeps_parts_apart() -> None:
    parts = ["/srv/app/alembic.ini", "db:prod", "head"]
    for index in range(len(parts)):
        changed = parts[:]
        changed[index] += "x"
        assert template_group(*parts) != template_group(*changed), index
    confusable = [
        (("ab", "c"), ("a", "bc")),
        (("a",), ("a", "")),
        (("a", "b"), ("b", "a")),
        (("",), ("", "")),
        (("a b",), ("a", "b")),
    ]
    for a, b in confusable:
        assert template_group(*a) != template_group(*b), (a, b)


def test_template_groups_do_not_collide() -> None:
    keys = {template_group(f"/srv/app{i}/alembic.ini", "db:prod", "head") for i in range(1000)}
    assert len(keys) == 1000
