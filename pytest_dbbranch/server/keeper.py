"""The keeper: lets the embedded server outlive a run, and stops it when nobody comes back.

Starting and stopping PostgreSQL (≈0.25 s) is most of what rerunning one test costs, so a
run may leave the server up for ``dbbranch_embedded_idle`` seconds. Something must then stop
it: this small detached process, one per server folder (it holds ``keeper.lock`` for its
whole life, so a second one exits at once and a killed one frees the lock). It polls twice a
second and stops the server

* after the idle period with no live run registered (a run killed with -9 leaves a
  registration whose process is gone: it counts as gone, so nothing is left forever);
* at once, with an immediate shutdown, when the data folder disappears (``rm -rf``): then
  there is nothing left to keep, and ``pg_ctl`` can no longer find the server.

It exits when the server stops for any other reason (a run under ``CI`` stops it itself). If
the keeper itself is killed, the next run starts a new one; and PostgreSQL checks its own lock
file every minute, so even then a removed data folder stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import filelock


class Kept(Protocol):
    """What the keeper needs of the server (``EmbeddedServer``, which imports this module)."""

    home: Path
    data: Path
    bindir: Path
    idle: float

    @property
    def lock(self) -> filelock.FileLock: ...

    def postmaster_pid(self) -> int | None: ...

    def live_users(self, *, prune: bool = True) -> list[str]: ...

    def stop_unless_used(self) -> bool: ...


#: Seconds between two looks at the server folder.
POLL = 0.5
#: A keeper spawned this recently is taken to be starting: no second one is spawned.
STARTUP_SECONDS = 3.0


def _try_lock(home: Path) -> int | None:
    """An open descriptor holding ``keeper.lock`` (a flock: it dies with its process), or None
    when another process holds it. Plain ``flock`` rather than ``filelock``: that one creates
    missing folders, and a keeper must never bring back a folder someone removed."""
    import fcntl

    fd = os.open(home / "keeper.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def keeper_alive(home: Path) -> bool:
    """Whether a keeper holds this folder's lock."""
    try:
        fd = _try_lock(home)
    except OSError:
        return False  # no folder: no keeper either
    if fd is None:
        return True
    os.close(fd)
    return False


def write_idle(home: Path, idle: float) -> None:
    """The idle period the keeper applies: the last run to come or leave sets it."""
    with contextlib.suppress(OSError):
        (home / "idle").write_text(f"{idle:g}")


def read_idle(home: Path) -> float:
    try:
        return max(0.0, float((home / "idle").read_text().strip()))
    except (OSError, ValueError):
        return 0.0


def ensure_keeper(server: Kept) -> None:
    """Record the idle period and start a keeper unless one runs (caller holds the server
    lock, so two runs never start two). Costs a flock when one runs, a detached spawn (not
    waited for) when not."""
    write_idle(server.home, server.idle)
    if keeper_alive(server.home):
        return
    spawned = server.home / "keeper.spawned"
    with contextlib.suppress(OSError):
        if time.time() - spawned.stat().st_mtime < STARTUP_SECONDS:
            return  # one is starting (Python takes a moment before it holds its lock)
    with contextlib.suppress(OSError):
        spawned.touch()
    # The postmaster's pid too: if the folder is gone before the keeper has started, that is
    # all it has to go on.
    pid = str(server.postmaster_pid() or 0)
    module = "pytest_dbbranch.server.keeper_run"
    argv = [sys.executable, "-m", module, str(server.home), str(server.bindir), pid]
    # Through sh and '&': the keeper is nobody's child (no zombie, no wait at exit) and has
    # no pipe of ours open (a test harness reading our output would wait for it). Its own
    # session keeps a Ctrl-C in the terminal from reaching it.
    subprocess.run(
        ["/bin/sh", "-c", '"$0" "$@" </dev/null >/dev/null 2>&1 &', *argv],
        check=False,
        start_new_session=True,
        cwd=str(server.home),
    )


def _quit(pid: int | None, data: Path) -> None:
    """Immediate shutdown of the postmaster of ``data`` whose files are gone (a fast one would
    write there). Only if ``pid`` still is that postmaster: its command line names the folder
    (``pg_ctl`` starts it with ``-D``), so a reused pid is left alone."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone; or no /proc to check with: PostgreSQL's own lock-file check stops it
    if str(data).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGQUIT)


def watch(server: Kept, postmaster: int | None) -> str:
    """Keep watch until the server stops; return why the keeper ends."""
    marker = server.data / "PG_VERSION"
    postmaster = server.postmaster_pid() or postmaster
    idle_since: float | None = None
    while True:
        if not marker.exists():
            _quit(postmaster, server.data)
            return "data folder removed"
        current = server.postmaster_pid()
        if current is None:
            if not (server.data / "postmaster.pid").exists():
                # Removed under a live server by an interrupted rm -rf (a clean stop removes
                # it too, as its very last step: then the process is gone or going anyway).
                _quit(postmaster, server.data)
            return "server stopped"
        postmaster = current
        if server.live_users(prune=False):
            idle_since = None
        else:
            now = time.monotonic()
            idle_since = now if idle_since is None else idle_since
            if now - idle_since >= read_idle(server.home):
                with server.lock:
                    if server.stop_unless_used():
                        return "idle"
                idle_since = None
        time.sleep(POLL)


def run(home: Path, postmaster: int | None, make: Callable[[], Kept]) -> int:
    """The keeper process: watch ``home`` unless another keeper does."""
    deadline = time.monotonic() + 0.5  # ``keeper_alive`` holds the lock for an instant
    while True:
        try:
            fd = _try_lock(home)
        except OSError:
            if not (home / "data" / "PG_VERSION").exists():
                _quit(postmaster, home / "data")  # removed before we started
            return 0
        if fd is not None:
            break
        if time.monotonic() > deadline:
            return 0  # another keeper watches this folder
        time.sleep(0.02)
    try:
        reason = watch(make(), postmaster)
    except Exception as exc:  # never leave a traceback on a terminal we are detached from
        reason = f"failed: {type(exc).__name__}: {exc}"
    if reason == "idle" or reason.startswith("failed"):
        # Only when the keeper acted (or broke): otherwise someone else stopped the server or
        # removed the folder, and a file written now could keep it from being removed.
        with contextlib.suppress(OSError), (home / "keeper.log").open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper {os.getpid()} ends: {reason}\n")
    os.close(fd)
    return 0
