"""The ``dbbranch`` command line, called in process (``cli.main``) as a shell would call it:
exit codes 0 done, 1 nothing to do, 2 an error to fix, 3 refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pytest_dbbranch import cli
from pytest_dbbranch.backends import use_lock
from pytest_dbbranch.settings import Settings
from tests.helpers import (
    AlembicProject,
    closed_port,
    create_database,
    databases,
    drop_database,
    drop_ours,
    our_branches,
)
from tests.integration.support import MakeManager


class Shell:
    """Runs ``dbbranch`` in a working directory and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def dbbranch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Shell:
    """The command line, run from an empty folder (no ini file to pick settings up from)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return Shell(capsys)


@pytest.fixture
def lookalikes(clean_embedded: str) -> Iterator[list[str]]:
    """Databases that look like ours but are not: never touched."""
    names = {"dbb-lookalike-m-f-test-0123456789": None, "dbbt-someone-else-0123": '{"tool":"other"}'}
    for name, comment in names.items():
        create_database(clean_embedded, name)
        if comment:
            with psycopg.connect(clean_embedded, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment))
                )
    yield list(names)
    for name in names:
        drop_database(clean_embedded, name)


def test_delete_refuses_what_is_not_ours(dbbranch: Shell, clean_embedded: str, lookalikes: list[str]) -> None:
    """Only our tag makes a database deletable, never its name: exit 3 for strangers, 1 for nothing."""
    for name in lookalikes:
        code, _out, err = dbbranch("delete", "--url", clean_embedded, name)
        assert code == 3, err
        assert "did not create it" in err
    assert set(lookalikes) <= set(databases(clean_embedded))
    code, _out, err = dbbranch("delete", "--url", clean_embedded, "dbb-does-not-exist")
    assert code == 1 and "no branch named 'dbb-does-not-exist'" in err


def test_create_then_delete(
    dbbranch: Shell, alembic_project: AlembicProject, clean_embedded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch made for a person is migrated and kept: gc leaves it until it is deleted."""
    monkeypatch.chdir(alembic_project.root)  # alembic.ini found there, as pytest would
    info = dbbranch.json("create", "--url", clean_embedded, "--name", "alice-debugging")
    assert "alice-debugging" in info["name"]
    with psycopg.connect(info["url"]) as conn:  # no password on this server
        assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    assert our_branches(clean_embedded) == [info["name"]]
    assert dbbranch("gc", "--url", clean_embedded)[0] == 0
    assert our_branches(clean_embedded) == [info["name"]]
    code, out, err = dbbranch("delete", "--url", clean_embedded, info["name"])
    assert code == 0, err
    assert out.strip() == f"deleted {info['name']}"
    assert our_branches(clean_embedded) == []


def test_list_shows_templates_and_kept_branches(
    dbbranch: Shell, make_manager: MakeManager, settings: Settings
) -> None:
    """What a run left on the server, for people (a table) and machines (JSON)."""
    url = str(settings.url)
    manager = make_manager(keep="failed")
    branch = manager.create(node_id="t::test_fails")
    branch.failed = True
    assert manager.release(branch) is True
    rows = dbbranch.json("list", "--url", url)
    assert sorted(row["kind"] for row in rows) == ["branch", "template"]
    listed = next(row for row in rows if row["kind"] == "branch")
    template = next(row for row in rows if row["kind"] == "template")
    assert listed["name"] == branch.name and listed["kept"] is True
    assert listed["parent"] == template["name"] == manager.template()
    assert template["ready"] is True
    code, table, _err = dbbranch("list", "--url", url)
    assert code == 0 and branch.name in table and template["name"] in table
    drop_ours(url)
    assert "no branches" in dbbranch("list", "--url", url)[1]


def test_list_unreachable_server_exits_2(dbbranch: Shell) -> None:
    """An error to fix is exit code 2 with one message, and the URL's password is not in it."""
    code, out, err = dbbranch("list", "--url", f"postgresql://u:topsecret@127.0.0.1:{closed_port()}/postgres")
    assert code == 2
    assert "cannot connect to PostgreSQL" in err
    assert "topsecret" not in out + err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list", "--url", "localhost:5432"], "dbbranch: --url: 'localhost:5432' is not a PostgreSQL URL"),
        (
            ["diff", "--source", "dumps/missing.sql"],
            "dbbranch: --source: the source dump file {cwd}/dumps/missing.sql",
        ),
        (
            ["diff", "--alembic-ini", "conf/alembic.ini"],
            "dbbranch: --alembic-ini: Alembic config file {cwd}/conf",
        ),
    ],
    ids=["url", "source", "alembic-ini"],
)
def test_messages_name_the_commands_own_flags(
    dbbranch: Shell, clean_embedded: str, args: list[str], expected: str
) -> None:
    """The command line shares the plugin's settings, but a message that said
    ``--dbbranch-url`` would name a flag ``dbbranch`` does not have."""
    if "--url" not in args:
        args = [*args, "--url", clean_embedded]
    code, _out, err = dbbranch(*args)
    assert code == 2, err
    assert expected.format(cwd=Path.cwd()) in err, err
    assert "--dbbranch-" not in err


def test_gc_removes_a_restored_dump_once_the_dump_changed(
    dbbranch: Shell, make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """After a snapshot refresh the old restore is forked by nothing (the next run replaced
    its template): ``gc`` removes it without ``--older-than`` (it held the old snapshot's
    size, in RAM on the embedded default, for good), but not while a live run holds it."""
    url = str(settings.url)
    dump = alembic_project.root / "snapshot.sql"
    dump.write_text("CREATE TABLE customers (id int);\n")
    before = make_manager(source="snapshot.sql")
    before.template()
    [old] = our_branches(url, "source")
    before.close()
    dump.write_text("CREATE TABLE customers (id int);\nINSERT INTO customers VALUES (1);\n")
    after = make_manager(source="snapshot.sql")
    after.template()
    [new] = set(our_branches(url, "source")) - {old}
    assert len(our_branches(url, "template")) == 1, "the new template replaced the old one"

    holder = make_manager()  # a live run that restored it and is about to fork it
    holder.backend().hold(use_lock(old))
    assert dbbranch.json("gc", "--url", url, "--dry-run")["candidates"] == []
    holder.close()
    report = dbbranch.json("gc", "--url", url, "--dry-run")
    assert {c["name"]: c["cause"] for c in report["candidates"]} == {old: "unused-source"}
    code, out, err = dbbranch("gc", "--url", url)
    assert code == 0, err
    assert f"deleted {old}  (restored dump no template uses)" in out
    assert our_branches(url, "source") == [new]
