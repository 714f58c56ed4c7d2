"""The embedded server and a small or full disk, as a run shows it: a ``/dev/shm`` too small
for a cluster is not used and the run's summary says where the data went instead; a disk
that fills up is named in the error (the review saw only "Connection refused" after 16 s).

Each inner run happens in a private mount namespace with the tmpfs it needs (nobody else
sees it; it vanishes with the namespace). Their folders are outside pytest's own temp folder,
which only root may enter: the embedded server runs as ``postgres`` when we are root.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    in_private_mounts,
    postmasters_in,
    private_mounts_or_skip,
    remove_embedded_folder,
    write_tests,
)

ONE_BRANCH = """
    def test_a(db_branch):
        assert db_branch.execute("SELECT 1").fetchone() == (1,)
"""

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-rA"]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder the server's unprivileged account can reach; removed after, with any server
    still running in it."""
    private_mounts_or_skip()
    folder = Path("/tmp") / f"dbbranch-disk-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o755)
    yield folder
    for home in (folder / "mnt", folder / "tmp" / f"pytest-dbbranch-{os.getuid()}"):
        remove_embedded_folder(home)
    remove_embedded_folder(folder)


def write_dump(path: Path, rows: int, *, unlogged: bool = False) -> None:
    """A plain SQL dump of one table of ``rows`` rows of about 240 bytes."""
    pad = "x" * 200
    with path.open("w") as out:
        out.write(f"CREATE {'UNLOGGED ' if unlogged else ''}TABLE big (id int, pad text);\n")
        out.write("COPY big (id, pad) FROM stdin;\n")
        out.writelines(f"{i}\t{pad}\n" for i in range(rows))
        out.write("\\.\n")


def on_tmpfs(pytester: pytest.Pytester, scratch: Path, size_mb: int, *args: str, **env: str) -> str:
    """Run the inner suite with its embedded server on a ``size_mb`` tmpfs; its output."""
    mount = scratch / "mnt"
    mount.mkdir()
    result = in_private_mounts(
        f'mount -t tmpfs -o size={size_mb}m,mode=755 tmpfs "{mount}"',
        [*PYTEST, *args],
        cwd=pytester.path,
        env=dict(os.environ, DBBRANCH_EMBEDDED_DIR=str(mount), **env),
    )
    assert postmasters_in(mount) == [], "the embedded server was left running"
    return result.stdout + result.stderr


def test_a_small_dev_shm_is_left_alone_and_the_summary_says_so(
    pytester: pytest.Pytester, scratch: Path
) -> None:
    """Docker's default /dev/shm (64 MB): the server goes to the temp folder and the run
    passes; the ``dbbranch`` summary says why and what to do."""
    write_tests(pytester, "test_one", ONE_BRANCH)
    temp = scratch / "tmp"
    temp.mkdir(mode=0o755)
    result = in_private_mounts(
        "mount -t tmpfs -o size=64m tmpfs /dev/shm",
        PYTEST,
        cwd=pytester.path,
        env=dict(os.environ, TMPDIR=str(temp)),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    home = temp / f"pytest-dbbranch-{os.getuid()}"
    assert list(home.glob("pg*/data/PG_VERSION")), "the cluster is not in the temp folder"
    note = "note: /dev/shm has 64 MB free, less than the 512 MB an embedded server needs: its data goes to"
    assert f"{note} {home}" in " ".join(output.split()), output
    assert postmasters_in(home) == [], "the embedded server was left running"


def test_a_fork_on_a_full_disk_says_the_disk_is_full(pytester: pytest.Pytester, scratch: Path) -> None:
    """The source fits, a copy of it does not: the fork's error names the full disk and the
    setting that gives the server more room."""
    write_tests(pytester, "test_one", ONE_BRANCH)
    # Unlogged: its rows take disk once (no WAL), so the restore fits and the copy does not.
    write_dump(pytester.path / "big.sql", 150_000, unlogged=True)
    output = on_tmpfs(pytester, scratch, 100, DBBRANCH_SOURCE="big.sql", DBBRANCH_ALEMBIC_INI="none")
    assert "no tests ran" in output, output  # the template is made before any test
    assert output.count("the disk holding the server's data is full") == 1, output
    assert "the disk holding the server's data is full" in output
    assert "No space left on device" in output
    assert "give the embedded server a larger folder (dbbranch_embedded_dir)" in output
    assert "Traceback" not in output


FILLS_THE_DISK = """
CREATE UNLOGGED TABLE filler (id int, pad text);
INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 500000) g;
"""


def test_a_restore_that_fills_the_disk_names_it(pytester: pytest.Pytester, scratch: Path) -> None:
    """A dump whose rows do not fit on the server's 100 MB tmpfs: the restore stops there
    with the rest of the dump unread, and the error the test gets must say why (psql's "No
    space left on device"), not only that a pipe broke."""
    write_tests(pytester, "test_one", ONE_BRANCH)
    dump = pytester.path / "big.sql"
    write_dump(dump, 20_000)  # the rest of the dump, after the statement that fills the disk
    dump.write_text(FILLS_THE_DISK + dump.read_text())
    output = on_tmpfs(pytester, scratch, 100, DBBRANCH_SOURCE="big.sql", DBBRANCH_ALEMBIC_INI="none")
    assert "no tests ran" in output, output  # the source is restored before any test
    assert "No space left on device" in output or "disk holding the server's data is full" in output, output
    assert "BrokenPipeError" not in output, output
