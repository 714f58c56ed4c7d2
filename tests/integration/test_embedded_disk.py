"""Where the embedded server keeps its data, and what ``dbbranch gc`` removes of it.

``/dev/shm`` is used only when it can hold a cluster (``MIN_SHM_FREE``) or already holds
ours: Docker's default is 64 MB, where a server would die of a full disk in the middle of a
run. Each case runs ``default_base_dir()`` in a child process with its own ``/dev/shm`` (a
tmpfs of the wanted size mounted in a private mount namespace: nobody else sees it, and it
vanishes with the child). Clusters of other versions or installs that nothing uses are
``stale_clusters``; they held RAM for nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.server.embedded import MIN_SHM_FREE, EmbeddedServer, server_major, stale_clusters
from tests.helpers import in_private_mounts, private_mounts_or_skip

USER = f"pytest-dbbranch-{os.getuid()}"

CHOOSE = """
import json
from pytest_dbbranch.server.embedded import default_base_dir
choice = default_base_dir()
print(json.dumps({"path": str(choice.path), "note": choice.note}))
"""


def choice_with_shm(size_mb: int, tmp_path: Path, *setup: str) -> tuple[Path, str | None]:
    """``default_base_dir()`` where ``/dev/shm`` is a fresh ``size_mb`` tmpfs (then ``setup``
    shell commands ran) and the temp folder is ``tmp_path/tmp``."""
    private_mounts_or_skip()
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    result = in_private_mounts(
        "\n".join([f"mount -t tmpfs -o size={size_mb}m tmpfs /dev/shm", *setup]),
        [sys.executable, "-c", CHOOSE],
        env=dict(os.environ, TMPDIR=str(temp)),
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    return Path(found["path"]), found["note"]


def test_a_small_dev_shm_sends_the_data_to_the_temp_folder_and_says_so(tmp_path: Path) -> None:
    path, note = choice_with_shm(64, tmp_path)
    assert path == tmp_path / "tmp" / USER
    assert note is not None
    assert note.startswith(f"/dev/shm has 64 MB free, less than the {MIN_SHM_FREE // 2**20} MB"), note
    assert f"its data goes to {path} on disk instead" in note
    assert "--shm-size" in note and "dbbranch_embedded_dir" in note


def test_a_large_enough_dev_shm_is_used(tmp_path: Path) -> None:
    """(An empty tmpfs uses no memory whatever its size.)"""
    assert choice_with_shm(MIN_SHM_FREE // 2**20 + 64, tmp_path) == (Path("/dev/shm") / USER, None)


def test_a_cluster_already_in_dev_shm_stays_there_however_full(tmp_path: Path) -> None:
    """Moving it would throw away its templates: ours stays where it is."""
    data = f"/dev/shm/{USER}/pg18-0123abcd/data"
    path, note = choice_with_shm(64, tmp_path, f"mkdir -p {data}", f"echo 18 > {data}/PG_VERSION")
    assert (path, note) == (Path("/dev/shm") / USER, None)


def test_the_data_folder_is_keyed_by_the_postgresql_major(embedded: EmbeddedServer) -> None:
    """``pg<major>-<hash of the binaries' folder>``: binaries of another major version never
    try to start this cluster (PostgreSQL refuses another major's data folder)."""
    assert server_major(embedded.bindir) == 18
    assert re.fullmatch(r"pg18-[0-9a-f]{8}", embedded.home.name), embedded.home
    assert (embedded.data / "PG_VERSION").read_text().strip() == "18"


# -- stale clusters ----------------------------------------------------------------------------


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def cluster(base: Path, name: str, *, postmaster: int | None = None, runs: tuple[int, ...] = ()) -> Path:
    """A cluster folder as the embedded server leaves it: data (with the postmaster's pid
    while it runs) and one file per registered run holding that run's pid."""
    home = base / name
    (home / "data").mkdir(parents=True)
    (home / "data" / "PG_VERSION").write_text("17\n")
    if postmaster is not None:
        (home / "data" / "postmaster.pid").write_text(f"{postmaster}\n{home / 'data'}\n1700000000\n5432\n")
    (home / "runs").mkdir()
    for index, pid in enumerate(runs):
        (home / "runs" / f"run{index}").write_text(str(pid))
    return home


def test_stale_clusters_are_the_stopped_unused_ones_of_other_folders(tmp_path: Path, dead_pid: int) -> None:
    live = os.getpid()
    keep = cluster(tmp_path, "pg18-0000aaaa")
    stopped = cluster(tmp_path, "pg17-1111bbbb", postmaster=dead_pid, runs=(dead_pid,))
    old_layout = cluster(tmp_path, "pg-2222cccc")  # before the folder was keyed by major
    cluster(tmp_path, "pg16-3333dddd", postmaster=live)  # a server runs on it
    cluster(tmp_path, "pg15-4444eeee", runs=(dead_pid, live))  # a live run registered
    (tmp_path / "pg14-5555ffff").mkdir()  # not a cluster
    (tmp_path / "other").mkdir()
    assert stale_clusters(tmp_path, keep) == sorted([stopped, old_layout])


@pytest.fixture
def stale_beside_the_server(embedded: EmbeddedServer, dead_pid: int) -> Iterator[tuple[Path, Path]]:
    """A stopped cluster and one a live run uses, beside the session's embedded server."""
    stale = cluster(embedded.base, "pg17-deadbeef", postmaster=dead_pid)
    used = cluster(embedded.base, "pg16-feedbeef", runs=(os.getpid(),))
    yield stale, used
    for home in (stale, used):
        shutil.rmtree(home, ignore_errors=True)


def test_gc_removes_stale_clusters_and_nothing_else(
    stale_beside_the_server: tuple[Path, Path],
    embedded: EmbeddedServer,
    clean_embedded: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``dbbranch gc`` on the embedded default: the stopped cluster of another version goes,
    the one a live run registered in and the server's own stay."""
    from pytest_dbbranch import cli

    stale, used = stale_beside_the_server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DBBRANCH_EMBEDDED_DIR", str(embedded.base))
    capsys.readouterr()
    assert cli.main(["gc", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clusters"] == [str(stale)]
    assert stale.exists()
    assert cli.main(["gc"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {stale}  (embedded cluster of another install, unused)" in out
    assert not stale.exists()
    assert used.exists() and (embedded.data / "PG_VERSION").exists()
