"""What the emulator does on the backing PostgreSQL server: one real database per branch.

Every backing database it makes carries a JSON comment naming this tool and this emulator
instance; ``drop_all_ours()`` drops exactly those, and nothing else is ever dropped, so
emulators can come and go on a server that also holds other people's databases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ..conninfo import ServerAddress

logger = logging.getLogger(__name__)

#: The ``tool`` of the JSON comment that marks a backing database as the emulator's.
EMULATOR_TAG_TOOL = "pytest-dbbranch-emulator"


class BackingDatabases:
    """The databases one emulator instance owns on the backing server."""

    def __init__(self, server: ServerAddress, instance: str) -> None:
        self.server = server
        self.instance = instance
        #: Backing databases this instance made. Clients may overwrite a database comment
        #: (the plugin tags its branches that way), so the registry counts as proof too.
        self._created: set[str] = set()

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        conn = psycopg.connect(self.server.conninfo(), autocommit=True, connect_timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def tag(self, project_id: str, branch_id: str) -> str:
        data = {
            "tool": EMULATOR_TAG_TOOL,
            "instance": self.instance,
            "project": project_id,
            "branch": branch_id,
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def _is_ours(self, comment: str | None) -> bool:
        try:
            data: Any = json.loads(comment or "")
        except ValueError:
            return False
        return (
            isinstance(data, dict)
            and data.get("tool") == EMULATOR_TAG_TOOL
            and data.get("instance") == self.instance
        )

    @staticmethod
    def new_name(project_id: str, branch_id: str) -> str:
        return f"lb_{project_id[:18]}_{branch_id[:28]}_{secrets.token_hex(5)}"

    def create(self, database: str, tag: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            self._created.add(database)
            self._comment(conn, database, tag)

    @staticmethod
    def _comment(conn: psycopg.Connection[tuple[Any, ...]], database: str, tag: str) -> None:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(database), sql.Literal(tag))
        )

    def clone(self, parent: str, database: str, tag: str) -> None:
        """Copy with TEMPLATE when nobody is connected to the parent, else dump and restore.

        TEMPLATE is the fast path but PostgreSQL refuses it while any session uses the parent;
        a Lakebase parent in use can still be branched, so the dump path keeps that promise.
        """
        with self.admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (parent,)
            ).fetchone()
            if row is not None and row[0] == 0:
                try:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(database), sql.Identifier(parent)
                        )
                    )
                except psycopg.errors.ObjectInUse:
                    pass  # someone connected after the check: take the dump path
                else:
                    self._tag_or_drop(conn, database, tag)
                    return
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database)))
            self._tag_or_drop(conn, database, tag)
        try:
            self._dump_restore(parent, database)
        except BaseException:
            self.drop(database)
            raise

    def _tag_or_drop(self, conn: psycopg.Connection[tuple[Any, ...]], database: str, tag: str) -> None:
        self._created.add(database)
        try:
            self._comment(conn, database, tag)
        except BaseException:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            raise

    def _dump_restore(self, parent: str, database: str) -> None:
        from ..server.binaries import client

        env = dict(os.environ)
        if self.server.password:
            env["PGPASSWORD"] = self.server.password
        source = dict(self.server.kwargs(parent))
        target = dict(self.server.kwargs(database))
        for params in (source, target):
            params.pop("password", None)
        dump_argv = [client("pg_dump"), "-Fc", "--dbname", psycopg.conninfo.make_conninfo(**source)]
        restore_argv = [
            client("pg_restore"),
            "--exit-on-error",
            "--dbname",
            psycopg.conninfo.make_conninfo(**target),
        ]
        with tempfile.TemporaryFile() as dump_errors:
            dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=dump_errors, env=env)
            assert dump.stdout is not None
            restore = subprocess.run(
                restore_argv, stdin=dump.stdout, capture_output=True, env=env, check=False
            )
            dump.stdout.close()
            dump_code = dump.wait()
            dump_errors.seek(0)
            dump_text = dump_errors.read().decode("utf-8", "replace")
        if dump_code != 0 or restore.returncode != 0:
            detail = (dump_text + restore.stderr.decode("utf-8", "replace")).strip()[-1500:]
            raise RuntimeError(f"copying {parent} into {database} with pg_dump/pg_restore failed: {detail}")

    def size(self, database: str) -> int:
        with self.admin() as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
        return int(row[0]) if row else 0

    def drop(self, database: str) -> None:
        with self.admin() as conn:
            self._drop(conn, database)

    def _drop(self, conn: psycopg.Connection[tuple[Any, ...]], database: str) -> None:
        """The tag, not the name, proves ownership: a user's database may well match our naming."""
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if row is None:
            self._created.discard(database)
            return
        if database not in self._created and not self._is_ours(row[0]):
            logger.warning("not dropping %s: this emulator did not create it", database)
            return
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        self._created.discard(database)

    def drop_all_ours(self) -> None:
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            ).fetchall()
            for name, comment in rows:
                if name in self._created or self._is_ours(comment):
                    with contextlib.suppress(psycopg.Error):
                        self._drop(conn, name)
