"""Build once, then seal: the protocol shared by migrated templates and restored dumps.

Many processes (xdist workers, concurrent CI jobs, machines sharing a server) may want the
same derived database at once. The first one to take the lock builds it; the others wait on
the lock and then find it sealed. The seal is the completion marker: anything without it
was left by a crash (or is being built on another machine, where no global lock exists) and
is never used. This is pgtestdb's template protocol, written once for both uses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import filelock

from ..backends import Backend, BranchRecord, Tag, build_lock
from ..errors import BranchExistsError, DbBranchError
from ..names import generated_kind
from ..progress import Progress

#: An unsealed object this long after creation was abandoned by a dead builder.
BUILD_TIMEOUT = 1800.0


def is_sealed(record: BranchRecord) -> bool:
    return record.ready


def ensure_sealed(
    backend: Backend,
    name: str,
    *,
    tag: Tag,
    parent: Callable[[], str],
    build: Callable[[], None],
    run_id: str,
    reusable: Callable[[BranchRecord], bool] = is_sealed,
    progress: Progress | None = None,
) -> bool:
    """Make sure ``name`` exists, built and sealed; True when this call built it.

    ``parent`` is asked only when a build is needed (restoring a dump is expensive), and
    ``tag`` gets its parent filled in. ``reusable`` says whether an existing sealed object
    may be used (``--dbbranch-rebuild`` says no once per run).
    """
    record = backend.describe(name)
    if record is not None and reusable(record):
        return False
    with _machine_lock(backend, name), backend.lock(build_lock(name)):
        # Whoever held the lock before us may have built it in the meantime.
        record = backend.describe(name)
        if record is not None and reusable(record):
            return False
        if record is not None and not _abandoned(record, backend, run_id):
            # Being built on another machine that shares this server: wait for it.
            wait_until_sealed(backend, name, backend.timeout)
            return False
        if record is not None:
            backend.drop(name)  # half-built by a crash, or rebuilt on request
        elif backend.exists(name):
            if not generated_kind(name):
                raise DbBranchError(
                    f"{name!r} exists but was not created by pytest-dbbranch; rename or drop it yourself"
                )
            if not backend.has_global_lock:
                # Created on another machine and not tagged yet: its build has just begun.
                wait_until_sealed(backend, name, backend.timeout)
                return False
            # Our name without our tag, while we hold the build lock: a builder was killed
            # between creating it and tagging it.
            backend.drop_untagged(name)
        parent_name = parent()
        full_tag = replace(tag, parent=parent_name)
        try:
            with (progress or Progress()).step(f"copying {parent_name} into {name}"):
                backend.fork(name, parent_name, full_tag)
        except BranchExistsError:
            wait_until_sealed(backend, name, backend.timeout)
            return False
        try:
            build()
            backend.seal(name, full_tag)
        except BaseException:
            with contextlib.suppress(Exception):
                backend.drop(name)
            raise
    return True


@contextlib.contextmanager
def _machine_lock(backend: Backend, name: str) -> Iterator[None]:
    """Builders on this machine queue on a file instead of each opening a connection to wait."""
    lock = filelock.FileLock(str(backend.lock_folder / f"{name}.lock"), timeout=backend.timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DbBranchError(
            f"waited {backend.timeout:.0f}s for another process on this machine building {name}; it "
            "may hang (dbbranch list shows who builds what; dbbranch_timeout sets the wait)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _abandoned(record: BranchRecord, backend: Backend, run_id: str) -> bool:
    """With a global lock held, an unsealed object is a crash's leftover. Without one
    (Lakebase), it may be another machine's build in progress unless it is old, or ours."""
    if record.ready or backend.has_global_lock:
        return True
    too_old = time.time() - record.tag.created > BUILD_TIMEOUT
    return too_old or record.tag.run == run_id


def wait_until_sealed(backend: Backend, name: str, timeout: float = BUILD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    while time.monotonic() < deadline:
        record = backend.describe(name)
        if record is not None and record.ready:
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
    raise DbBranchError(f"{name} was not sealed within {timeout:.0f}s")
