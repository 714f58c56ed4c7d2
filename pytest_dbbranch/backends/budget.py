"""A counting semaphore on files: how many branches this machine's workers hold at once.

Lakebase projects allow only about ten unarchived branches. xdist workers are separate
processes, so the count lives in lock files: slot ``i`` is held while a branch is alive and
released by the kernel if the process dies, so a crashed worker never leaks budget.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import filelock

from ..errors import DbBranchError


class BranchBudget:
    def __init__(self, folder: Path, slots: int, *, wait_timeout: float = 1800.0) -> None:
        if slots < 1:
            raise DbBranchError(
                f"the branch budget is {slots}; it must be at least 1 (dbbranch_lakebase_budget)"
            )
        self.folder = folder
        self.slots = slots
        self.wait_timeout = wait_timeout
        self._held: dict[str, filelock.BaseFileLock] = {}
        self._mutex = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def acquire(self, owner: str) -> None:
        """Take a slot for ``owner`` (a branch name), waiting while all are taken."""
        deadline = time.monotonic() + self.wait_timeout
        order = list(range(self.slots))
        attempt = 0
        while True:
            random.shuffle(order)
            for index in order:
                lock = filelock.FileLock(str(self.folder / f"slot-{index}.lock"), thread_local=False)
                try:
                    lock.acquire(timeout=0)
                except filelock.Timeout:
                    continue
                with self._mutex:
                    self._held[owner] = lock
                return
            if time.monotonic() > deadline:
                raise DbBranchError(
                    f"waited {self.wait_timeout:.0f}s for one of {self.slots} branch slots "
                    "(dbbranch_lakebase_budget); are other runs on this machine holding them?"
                )
            # Block on one slot for a moment instead of spinning on all of them.
            lock = filelock.FileLock(str(self.folder / f"slot-{order[0]}.lock"), thread_local=False)
            attempt += 1
            try:
                lock.acquire(timeout=min(0.05 * attempt, 0.5))
            except filelock.Timeout:
                continue
            with self._mutex:
                self._held[owner] = lock
            return

    def release(self, owner: str) -> None:
        with self._mutex:
            lock = self._held.pop(owner, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        with self._mutex:
            locks = list(self._held.values())
            self._held.clear()
        for lock in locks:
            lock.release()
