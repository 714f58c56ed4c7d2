"""Size-independent branches where the disk allows: reflink clones on XFS (PostgreSQL 18),
and plain file copies everywhere else."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbbranch.backends.postgres import PostgresBackend
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.server.embedded import EmbeddedServer, supports_reflink
from pytest_dbbranch.settings import Settings


@pytest.fixture
def xfs_folder(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted XFS with reflink=1 (what a user would point dbbranch_embedded_dir at)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs (apt-get install xfsprogs); .ci/run installs it")
    image = tmp_path / "xfs.img"
    mount = Path("/mnt") / f"dbbranch-xfs-{uuid.uuid4().hex[:8]}"
    subprocess.run(["truncate", "-s", "700M", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mount.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        mount.rmdir()
        pytest.skip(f"loop mounts are not allowed here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def _postgres(manager: BranchManager) -> PostgresBackend:
    backend = manager.backend()
    assert isinstance(backend, PostgresBackend)
    return backend


def test_tmpfs_copies_files(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """tmpfs has no reflinks: the probe says so and cleans up, and the embedded server there
    forks with plain FILE_COPY."""
    folder = Path("/dev/shm") / f"dbbranch-probe-{uuid.uuid4().hex[:6]}"
    try:
        assert supports_reflink(folder) is False
        assert list(folder.iterdir()) == [], "the probe cleans up after itself"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with BranchManager(
        Settings(embedded_dir=str(embedded.home.parent), root=tmp_path), run_id="plain"
    ) as plain:
        backend = _postgres(plain)
        assert backend.strategy == "FILE_COPY"
        assert backend.file_copy_method is None


def test_embedded_server_on_xfs_clones(xfs_folder: Path, tmp_path: Path) -> None:
    """On XFS with reflink=1 the embedded server forks by cloning files, and branches work."""
    assert supports_reflink(xfs_folder / "probe") is True
    with BranchManager(
        Settings(embedded_dir=str(xfs_folder / "pg"), root=tmp_path), run_id="reflink"
    ) as manager:
        backend = _postgres(manager)
        assert backend.strategy == "FILE_COPY"
        assert backend.file_copy_method == "clone"
        with manager.branch() as branch, branch.connect() as conn:
            conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
            conn.commit()
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
