"""Scenario 9: PostgreSQL 18 ``file_copy_method = clone`` on XFS with reflinks, against ``copy``.

Needs root (loop mount) and ``mkfs.xfs``. A sparse image file is formatted with
``reflink=1`` and loop-mounted under ``/mnt``; a second embedded server keeps its data folder
there. The image is unmounted and deleted in every case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from pytest_dbbranch.server.embedded import EmbeddedServer

from .common import Workspace, fill_to_size, log, summarize_seconds
from .growth import raw_branch_cycle

SKIP_REASON = "skipped: reflink scenario needs root and mkfs.xfs (apt-get install xfsprogs)"


def unavailable_reason() -> str | None:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        return SKIP_REASON
    return None


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


def run_reflink(ws: Workspace, sizes_mb: list[float], reps: int, image_dir: Path) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        print(reason, flush=True)
        return {"skipped": reason}
    if not sizes_mb:
        return {"skipped": "no source size of 100 MB or more in --sizes"}
    tag = f"dbbranch-bench-{os.getpid()}"
    image = image_dir / f"{tag}.xfs"
    mount = Path("/mnt") / tag
    # Room for the source, one copy of it, and the WAL written while filling it.
    image_gb = max(4, int(max(sizes_mb) * 4 / 1024) + 2)
    mounted = False
    out: dict[str, Any] = {"filesystem": "xfs, reflink=1, loop image", "image_gb": image_gb, "reps": reps}
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
        _run("truncate", "-s", f"{image_gb}G", str(image))
        _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        mount.mkdir(parents=True, exist_ok=False)
        _run("mount", "-o", "loop", str(image), str(mount))
        mounted = True
        out["by_size"] = _measure(mount / "pg", sizes_mb, reps)
    finally:
        if mounted:
            for attempt in range(10):
                result = subprocess.run(["umount", str(mount)], capture_output=True, text=True, check=False)
                if result.returncode == 0:
                    break
                time.sleep(0.5 * (attempt + 1))
            else:
                ws.note(f"could not unmount {mount}: {result.stderr.strip()}")
        with contextlib.suppress(OSError):
            mount.rmdir()
        with contextlib.suppress(FileNotFoundError):
            image.unlink()
    return out


def _measure(data_home: Path, sizes_mb: list[float], reps: int) -> dict[str, Any]:
    server = EmbeddedServer(data_home)
    address = server.acquire("bench-reflink")
    results: dict[str, Any] = {}
    try:
        with psycopg.connect(address.conninfo(), autocommit=True) as admin:
            row = admin.execute("SHOW server_version_num").fetchone()
            if row is None or int(row[0]) < 180000:
                return {"skipped": "file_copy_method needs PostgreSQL 18"}
            for size in sizes_mb:
                source = f"bench_reflink_{size:g}mb"
                admin.execute(f'CREATE DATABASE "{source}" TEMPLATE template0')
                info = fill_to_size(address, source, size)
                admin.execute("CHECKPOINT")
                entry: dict[str, Any] = {"source": info}
                for method in ("copy", "clone"):
                    admin.execute(f"SET file_copy_method = {method}")
                    cycles = [
                        raw_branch_cycle(address, admin, source, "bench_reflink_branch") for _ in range(reps)
                    ]
                    entry[method] = {
                        step: summarize_seconds([c[step] for c in cycles])
                        for step in ("create", "connect", "drop", "total")
                    }
                admin.execute("RESET file_copy_method")
                copy_ms = entry["copy"]["create"]["median_ms"]
                clone_ms = entry["clone"]["create"]["median_ms"]
                entry["create_ratio_copy_vs_clone"] = round(copy_ms / clone_ms, 2)
                results[f"{size:g}mb"] = entry
                log(f"reflink {size:g} MB: CREATE copy {copy_ms:.1f} ms, clone {clone_ms:.1f} ms")
                admin.execute(f'DROP DATABASE "{source}"')
    finally:
        server.release("bench-reflink")
    return results
