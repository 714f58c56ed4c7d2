"""One real PostgreSQL cluster per Lakebase branch.

Why clusters and not databases: on Lakebase a branch is a whole server. Its ``pg_database``
shows only its own databases, ``current_database()`` is ``databricks_postgres``, roles and
ownership are the branch's own, and a database made with ``CREATE DATABASE`` inside branch A
never shows up in B. Databases on one shared server cannot give any of that, and sessions
there run as a superuser that hides ownership errors. So a project's production is an
``initdb`` (copied from one made per emulator), a child is a ``pg_basebackup`` of its parent
(a consistent copy while the parent stays in use), and each cluster listens on a private unix
socket only the proxy uses. Small settings keep a dozen clusters cheap.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..conninfo import ServerAddress
from ..errors import EmbeddedServerError
from ..server.binaries import find_bindir

if TYPE_CHECKING:
    import pwd

#: The role each branch's sessions are checked against instead of a superuser: what
#: Lakebase's ``databricks_superuser`` grants, minus SUPERUSER.
MEMBER_ROLE = "databricks_superuser"
POSTGRES_DATABASE = "databricks_postgres"
#: The unix socket's "port": every cluster has a folder of its own, so they can all use it.
SOCKET_PORT = 5432
#: The superuser the emulator itself uses; clients never log in as it.
ADMIN = "postgres"
SETTINGS = {
    "listen_addresses": "",
    "shared_buffers": "16MB",
    "max_connections": "50",
    # One sender per fork of this branch at a time: CI jobs fork one parent together.
    "max_wal_senders": "16",
    "max_worker_processes": "4",
    "min_wal_size": "2MB",
    "max_wal_size": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "autovacuum": "off",
    "log_min_messages": "warning",
    "log_checkpoints": "off",
    # Segments in the data folder, removed with it (posix ones outlive an immediate stop).
    "dynamic_shared_memory_type": "mmap",
}
MIN_SHM_FREE = 512 * 1024 * 1024

_templates_lock = threading.Lock()
#: (base folder, binaries, owner) -> a stopped, bootstrapped data folder projects copy.
_templates: dict[tuple[str, str, str], Path] = {}


class ClusterError(RuntimeError):
    """A PostgreSQL program failed; the message carries its output, never a password."""


@dataclass
class Cluster:
    key: str
    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    def address(self, user: str = ADMIN, dbname: str = POSTGRES_DATABASE) -> ServerAddress:
        return ServerAddress(host=str(self.home), port=SOCKET_PORT, user=user, dbname=dbname)


def default_root() -> Path:
    """/dev/shm when it has room: clusters are throwaway and RAM makes forks near-instant."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= MIN_SHM_FREE:
        return shm
    return Path(tempfile.gettempdir())


class Clusters:
    """Makes, forks, starts, stops and removes the clusters under one folder it owns."""

    def __init__(self, base: Path | None, owner: str, instance: str) -> None:
        self.bindir = find_bindir()
        self.owner = owner
        self.root = (base or default_root()) / f"dbbranch-emu-{instance}"
        self._run_as = _unprivileged_user()
        self._lock = threading.Lock()
        self._count = 0
        self.live: dict[str, Cluster] = {}

    # -- making clusters --------------------------------------------------------------------

    def _new_home(self) -> Cluster:
        with self._lock:
            self._count += 1
            key = f"c{self._count}"
        home = self.root / key
        home.mkdir(parents=True)
        self._chown(home)
        return Cluster(key, home)

    def _make_root(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        self._chown(root)

    def _template_data(self) -> Path:
        """initdb and bootstrap the roles once per process and owner; projects copy the result.

        Shared by every emulator of the process (tests start several), kept in a folder of its
        own that is removed when the process exits."""
        with self._lock:
            self._make_root(self.root)
        key = (str(self.root.parent), str(self.bindir), self.owner)
        with _templates_lock:
            if key not in _templates:
                shared = self.root.parent / f"dbbranch-emu-templates-{os.getpid()}"
                if not shared.exists():
                    atexit.register(shutil.rmtree, shared, True)
                self._make_root(shared)
                cluster = Cluster(f"t{len(_templates) + 1}", shared / f"t{len(_templates) + 1}")
                cluster.home.mkdir()
                self._chown(cluster.home)
                argv = [str(self.bindir / "initdb"), "-D", str(cluster.data), "-U", ADMIN, "--auth=trust"]
                # 1 MB WAL segments: a fresh cluster and each fork copy ~25 MB instead of ~40.
                self._run([*argv, "-E", "UTF8", "--locale=C", "-N", "--wal-segsize=1"], "initdb")
                self.start(cluster)
                try:
                    self._bootstrap(cluster)
                finally:
                    self.stop(cluster)
                _templates[key] = cluster.data
            return _templates[key]

    def _bootstrap(self, cluster: Cluster) -> None:
        """The role layout Lakebase documents: the owner's role owns databricks_postgres, other
        identities get rights through a member role that is not a superuser."""
        owner, member = sql.Identifier(self.owner), sql.Identifier(MEMBER_ROLE)
        with self.admin(cluster, "postgres") as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB CREATEROLE BYPASSRLS").format(member))
            conn.execute(
                sql.SQL(
                    "GRANT pg_read_all_data, pg_write_all_data, pg_monitor, pg_signal_backend TO {}"
                ).format(member)
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE BYPASSRLS IN ROLE {}").format(owner, member)
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(POSTGRES_DATABASE), owner)
            )
            conn.execute(
                sql.SQL("GRANT ALL ON DATABASE {} TO {} WITH GRANT OPTION").format(
                    sql.Identifier(POSTGRES_DATABASE), member
                )
            )
        with self.admin(cluster, POSTGRES_DATABASE) as conn:
            conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {} WITH GRANT OPTION").format(member))

    def create_root(self) -> Cluster:
        """A project's production: a copy of the bootstrapped template, started."""
        template = self._template_data()
        cluster = self._new_home()
        result = subprocess.run(
            ["cp", "-a", str(template), str(cluster.data)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ClusterError(f"copying the template cluster failed: {result.stderr.strip()}")
        self.start(cluster)
        return cluster

    def fork(self, parent: Cluster) -> Cluster:
        """A consistent copy of a running parent, whoever is connected to it."""
        cluster = self._new_home()
        try:
            self._run(
                [
                    str(self.bindir / "pg_basebackup"),
                    "-D",
                    str(cluster.data),
                    "-h",
                    str(parent.home),
                    "-p",
                    str(SOCKET_PORT),
                    "-U",
                    ADMIN,
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-N",
                ],
                "pg_basebackup",
            )
            self.start(cluster)
        except BaseException:
            shutil.rmtree(cluster.home, ignore_errors=True)
            raise
        return cluster

    # -- running clusters -------------------------------------------------------------------

    def start(self, cluster: Cluster) -> None:
        options = dict(SETTINGS, port=str(SOCKET_PORT), unix_socket_directories=str(cluster.home))
        opts = " ".join(f"-c {key}={value or repr('')}" for key, value in options.items())
        argv = [str(self.bindir / "pg_ctl"), "start", "-D", str(cluster.data), "-w", "-t", "60"]
        self._run([*argv, "-l", str(cluster.home / "server.log"), "-o", opts], "pg_ctl start")
        with self._lock:
            self.live[cluster.key] = cluster

    def stop(self, cluster: Cluster, *, immediate: bool = False) -> None:
        with self._lock:
            self.live.pop(cluster.key, None)
        argv = [str(self.bindir / "pg_ctl"), "stop", "-D", str(cluster.data), "-w", "-t", "60"]
        self._run([*argv, "-m", "immediate" if immediate else "fast"], "pg_ctl stop", check=False)

    def remove(self, cluster: Cluster) -> None:
        self.stop(cluster, immediate=True)
        shutil.rmtree(cluster.home, ignore_errors=True)

    def close(self) -> None:
        """Stop every cluster (side by side) and delete the folder: nothing of an emulator outlives it."""
        with self._lock:
            live = list(self.live.values())
        stoppers = [threading.Thread(target=self.stop, args=(c,), kwargs={"immediate": True}) for c in live]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside a cluster -------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(
        self, cluster: Cluster, dbname: str = POSTGRES_DATABASE
    ) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        conn = psycopg.connect(cluster.address(ADMIN, dbname).conninfo(), autocommit=True, connect_timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def add_role(self, cluster: Cluster, name: str) -> None:
        """An identity that is not the owner: it logs in, creates databases, and is a member of
        the non-superuser role; no ownership of databricks_postgres."""
        with self.admin(cluster, "postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN CREATEDB IN ROLE {}").format(
                        sql.Identifier(name), sql.Identifier(MEMBER_ROLE)
                    )
                )

    def size(self, cluster: Cluster) -> int:
        with self.admin(cluster) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def restore(self, cluster: Cluster, source: ServerAddress, database: str) -> None:
        """Seed production from a database elsewhere, its objects owned by the project owner."""
        from ..server.binaries import client

        env = dict(os.environ)
        if source.password:
            env["PGPASSWORD"] = source.password
        params = dict(source.kwargs(database))
        params.pop("password", None)
        dump = [
            client("pg_dump"),
            "-Fc",
            "--no-owner",
            "--no-acl",
            "--dbname",
            psycopg.conninfo.make_conninfo(**params),
        ]
        target = cluster.address(ADMIN, POSTGRES_DATABASE).conninfo()
        restore = [client("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error", "--role", self.owner]
        with tempfile.TemporaryFile() as errors:
            dumping = subprocess.Popen(dump, stdout=subprocess.PIPE, stderr=errors, env=env)
            assert dumping.stdout is not None
            done = subprocess.run(
                [*restore, "--dbname", target],
                stdin=dumping.stdout,
                capture_output=True,
                env=env,
                check=False,
            )
            dumping.stdout.close()
            code = dumping.wait()
            errors.seek(0)
            text = errors.read().decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
        if code != 0 or done.returncode != 0:
            raise ClusterError(
                f"seeding production from {database} failed: {source.redact(text.strip()[-1500:])}"
            )

    # -- processes --------------------------------------------------------------------------

    def _run(self, argv: list[str], what: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
            kwargs["env"] = dict(os.environ, HOME=self._run_as.pw_dir or "/")
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, cwd=str(self.root), **kwargs
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{what} failed: {(result.stderr or result.stdout).strip()[-1500:]}")
        return result

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then run the clusters as 'postgres' or 'nobody'."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    wanted = os.environ.get("DBBRANCH_EMBEDDED_USER")
    for name in [wanted] if wanted else ["postgres", "nobody"]:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedServerError(
        "running as root, and PostgreSQL refuses to run as root: no 'postgres' or 'nobody' account "
        "to run the emulator's clusters as; set DBBRANCH_EMBEDDED_USER to an existing user"
    )
