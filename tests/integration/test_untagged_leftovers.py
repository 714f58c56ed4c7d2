"""Untagged leftovers (a process killed between ``CREATE DATABASE`` and the tag) go once their
maker is provably gone, and only they: recognised by a name this tool generated (it ends in
a check of the rest), judged by the server's locks (a branch's run lock, a template's build
lock). ``suites/test_untagged_leftovers.py`` kills real runs; here the leftovers are made
by hand, so that a live maker can be held on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch import cli, names
from pytest_dbbranch.backends import build_lock
from pytest_dbbranch.backends.postgres import PostgresBackend
from tests.helpers import create_database, databases, drop_database
from tests.integration.support import MakeManager

DEAD_BRANCH = names.branch_name("deadrun", "gw1", "function", "t::killed-before-its-tag")
LIVE_BRANCH = names.branch_name("liverun", "gw1", "function", "t::being-tagged")
DEAD_TEMPLATE = names.template_name("0123456789", "ab" * 32)
BUILDING = names.template_name("0123456789", "cd" * 32)
#: Our name shapes with a wrong check: somebody's own databases.
LOOKALIKES = [DEAD_BRANCH[:-4] + "0000", DEAD_TEMPLATE[:-4] + "0000"]


def shell(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def leftovers(clean_embedded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Untagged databases: two made by dead processes, one by a live run, one by a live
    builder, and look-alikes. The command line runs from an empty folder."""
    assert all(names.generated_kind(name) for name in (DEAD_BRANCH, LIVE_BRANCH, DEAD_TEMPLATE, BUILDING))
    assert not any(names.generated_kind(name) for name in LOOKALIKES)
    monkeypatch.chdir(tmp_path)
    every = [DEAD_BRANCH, LIVE_BRANCH, DEAD_TEMPLATE, BUILDING, *LOOKALIKES]
    for name in every:
        create_database(clean_embedded, name)
    yield clean_embedded
    for name in every:
        drop_database(clean_embedded, name)


def test_leftovers_go_once_their_maker_is_gone(
    make_manager: MakeManager, backend: PostgresBackend, leftovers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dbbranch gc`` lists and removes the leftovers of dead makers; ``dbbranch delete``
    deletes one (exit 0) and refuses one whose maker lives (exit 3): it may be tagged any
    moment. Once the run and the builder are gone, the next run's reaper takes theirs too.
    Look-alikes are never candidates and delete refuses them."""
    url = leftovers
    live = make_manager(run_id="liverun", reap_on_start=False)
    live.backend()  # holds run:liverun
    with backend.lock(build_lock(BUILDING)):
        code, out, err = shell(capsys, "gc", "--url", url, "--dry-run", "--json")
        assert code == 0, err
        assert {c["name"] for c in json.loads(out)["candidates"]} == {DEAD_BRANCH, DEAD_TEMPLATE}

        code, out, err = shell(capsys, "delete", "--url", url, DEAD_BRANCH)
        assert (code, out.strip()) == (0, f"deleted {DEAD_BRANCH}"), err
        for name in (LIVE_BRANCH, BUILDING, *LOOKALIKES):
            code, _out, err = shell(capsys, "delete", "--url", url, name)
            assert code == 3 and "refusing to drop" in err, (name, err)

        code, out, err = shell(capsys, "gc", "--url", url)
        assert code == 0, err
        assert out.splitlines() == [
            f"deleted {DEAD_TEMPLATE}  (untagged leftover of a process killed while creating it)"
        ]

    live.close()
    reaper = make_manager(worker_id="gw0")
    reaper.backend()  # a run's reaper, at its start
    assert reaper.stats.branches_reaped == 2
    left = set(databases(url))
    assert not {DEAD_BRANCH, LIVE_BRANCH, DEAD_TEMPLATE, BUILDING} & left
    assert set(LOOKALIKES) <= left
    assert shell(capsys, "gc", "--url", url)[1].strip() == "nothing to delete"
