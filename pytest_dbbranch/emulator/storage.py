"""Where a branch's data lives, behind one small interface the API and the proxy share.

``ClusterStorage`` (the default) gives every branch its own PostgreSQL cluster, so sessions log
in as the identity's own role and see only the branch's databases, as on Lakebase.
``DatabaseStorage`` is the older, lighter model kept for hosts without server binaries: one
database per branch on a shared backing server, sessions as that server's superuser.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psycopg

from ..conninfo import ServerAddress
from .backing import BackingDatabases
from .clusters import POSTGRES_DATABASE, Cluster, Clusters


@dataclass(frozen=True)
class Target:
    """Where the proxy opens a session: a server address (with its login user) and a database."""

    address: ServerAddress
    database: str


class Refused(Exception):
    """The session's database or role does not exist there; carries the SQLSTATE."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class Storage(Protocol):
    def create_root(
        self, project_id: str, source: ServerAddress | None, source_database: str | None
    ) -> str: ...

    def fork(self, parent: str, project_id: str, branch_id: str) -> str: ...

    def drop(self, handle: str) -> None: ...

    def suspend(self, handle: str) -> None: ...

    def resume(self, handle: str) -> None: ...

    def size(self, handle: str) -> int: ...

    def add_role(self, handle: str, identity: str) -> None: ...

    def target(self, handle: str, identity: str, database: str) -> Target: ...

    def major_version(self) -> int: ...

    def close(self) -> None: ...


class ClusterStorage:
    """Sessions log in as the identity's own role, on the branch's own cluster."""

    def __init__(self, base: Path | None, owner: str, instance: str) -> None:
        self.clusters = Clusters(base, owner, instance)
        self._by_handle: dict[str, Cluster] = {}

    def _get(self, handle: str) -> Cluster:
        return self._by_handle[handle]

    def create_root(self, project_id: str, source: ServerAddress | None, source_database: str | None) -> str:
        cluster = self.clusters.create_root()
        self._by_handle[cluster.key] = cluster
        if source is not None and source_database is not None:
            self.clusters.restore(cluster, source, source_database)
        return cluster.key

    def fork(self, parent: str, project_id: str, branch_id: str) -> str:
        cluster = self.clusters.fork(self._get(parent))
        self._by_handle[cluster.key] = cluster
        return cluster.key

    def drop(self, handle: str) -> None:
        cluster = self._by_handle.pop(handle, None)
        if cluster is not None:
            self.clusters.remove(cluster)

    def suspend(self, handle: str) -> None:
        self.clusters.stop(self._get(handle))

    def resume(self, handle: str) -> None:
        self.clusters.start(self._get(handle))

    def size(self, handle: str) -> int:
        return self.clusters.size(self._get(handle))

    def add_role(self, handle: str, identity: str) -> None:
        self.clusters.add_role(self._get(handle), identity)

    def target(self, handle: str, identity: str, database: str) -> Target:
        return Target(self._get(handle).address(identity, database), database)

    def major_version(self) -> int:
        from ..server.binaries import server_major

        return server_major(self.clusters.bindir)

    def close(self) -> None:
        self.clusters.close()


class DatabaseStorage:
    """Sessions log in as the backing server's superuser, on the branch's backing database."""

    def __init__(self, backing: ServerAddress, instance: str) -> None:
        self.backing = backing
        self.databases = BackingDatabases(backing, instance)

    def create_root(self, project_id: str, source: ServerAddress | None, source_database: str | None) -> str:
        database = self.databases.new_name(project_id, "production")
        tag = self.databases.tag(project_id, "production")
        if source_database is None:
            self.databases.create(database, tag)
        else:
            self.databases.clone(source_database, database, tag)
        return database

    def fork(self, parent: str, project_id: str, branch_id: str) -> str:
        database = self.databases.new_name(project_id, branch_id)
        self.databases.clone(parent, database, self.databases.tag(project_id, branch_id))
        return database

    def drop(self, handle: str) -> None:
        self.databases.drop(handle)

    def suspend(self, handle: str) -> None:
        """Nothing runs per branch here; the proxy refuses logins to a deleted branch."""

    def resume(self, handle: str) -> None:
        """See ``suspend``."""

    def size(self, handle: str) -> int:
        return self.databases.size(handle)

    def add_role(self, handle: str, identity: str) -> None:
        """Sessions run as the backing superuser in this model: roles are not needed."""

    def target(self, handle: str, identity: str, database: str) -> Target:
        if database == POSTGRES_DATABASE:
            return Target(self.backing, handle)
        # Simplification of this model: databases made with CREATE DATABASE live on the backing
        # server under their own names and are shared by all branches.
        if database.startswith("lb_") or database == handle:
            raise Refused("3D000", f'database "{database}" does not exist')
        return Target(self.backing, database)

    def major_version(self) -> int:
        with self.databases.admin() as conn:
            return conn.info.server_version // 10000

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.databases.drop_all_ours()
