"""Helpers shared by the test layers (fixtures live in ``conftest.py``).

Imported as ``from tests.helpers import ...``; nothing here starts a server by itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from psycopg import sql

from pytest_dbbranch.conninfo import ServerAddress
from pytest_dbbranch.server.binaries import client

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "inventory"
SYSTEM_ADMIN_URL = os.environ.get("DBBRANCH_TEST_SYSTEM_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The password of the test roles: every output a test checks for leaks is searched for it.
SECRET = "s3cr3t-Pa55-" + uuid.uuid4().hex[:8]
TAG_MARK = '"tool":"pytest-dbbranch"'


# -- databases on a server ----------------------------------------------------------------------


def databases(url: str) -> dict[str, str | None]:
    """Databases the connecting role owns, with their comment (our tag, if any).

    Limited to the role's own, so a shared server's other users are never touched.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE pg_get_userbyid(datdba) = current_user"
        ).fetchall()
    return {name: comment for name, comment in rows}


def our_branches(url: str, kind: str = "branch") -> list[str]:
    """Names of the databases of one kind (branch, template, source) that carry our tag."""
    return sorted(
        name
        for name, comment in databases(url).items()
        if comment and TAG_MARK in comment and f'"kind":"{kind}"' in comment
    )


def drop_ours(url: str) -> None:
    """Leave the server clean between tests: drop only what carries our tag."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name, comment in databases(url).items():
            if comment and TAG_MARK in comment:
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))


def create_database(url: str, name: str, *statements: str) -> None:
    """A fresh database ``name`` (dropped first if it exists), with ``statements`` run in it."""
    address = ServerAddress.parse(url)
    with psycopg.connect(address.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if statements:
        with psycopg.connect(address.conninfo(name), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  # test SQL, not user input


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(ServerAddress.parse(url).conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_dump(url: str, dbname: str, *args: str) -> bytes:
    """Schema and data of a database, for before/after comparisons."""
    address = ServerAddress.parse(url)
    env = dict(os.environ, PGPASSWORD=address.password or "")
    argv = [
        client("pg_dump"),
        "-h",
        address.host or "",
        "-p",
        str(address.port or 5432),
        "-U",
        address.user or "postgres",
        "--no-comments",
        *args,
        dbname,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, check=True).stdout
    if any(arg.startswith("-F") for arg in args):
        return out
    # PostgreSQL 18's pg_dump writes a random \restrict key into plain dumps.
    return b"\n".join(
        line for line in out.splitlines() if not line.startswith((b"\\restrict", b"\\unrestrict"))
    )


def restore_snapshot(address: ServerAddress, dbname: str) -> None:
    """A fresh database ``dbname`` holding the example's production snapshot."""
    create_database(address.url(), dbname)
    argv = [client("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(EXAMPLE / "snapshot.sql")]
    subprocess.run([*argv, address.conninfo(dbname)], check=True, capture_output=True)


def closed_port() -> int:
    """A loopback port nothing listens on (for 'server unreachable')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- Alembic projects -------------------------------------------------------------------------

ENV_PY = """
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
with open(os.path.join(os.path.dirname(__file__), "..", "alembic_runs.log"), "a") as log:
    log.write(f"{os.getpid()}\\n")

connectable = config.attributes.get("connection")
if connectable is None:
    engine = engine_from_config(config.get_section(config.config_ini_section),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connectable, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
from alembic import op
revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
{body}

def downgrade():
{down_body}
"""


class AlembicProject:
    """A throwaway Alembic project in a folder; counts its own runs (``env.py`` logs each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ini = root / "alembic.ini"
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        (root / "migrations" / "env.py").write_text(ENV_PY)
        (root / "migrations" / "script.py.mako").write_text("# unused\n")
        self.ini.write_text(
            "[alembic]\nscript_location = %(here)s/migrations\n"
            "sqlalchemy.url = postgresql+psycopg://nowhere/none\n"
        )

    def add(self, revision: str, down: str | None, *statements: str, undo: tuple[str, ...] = ()) -> Path:
        """A revision running ``statements``; ``undo`` are its downgrade's (none: ``pass``)."""
        body = "\n".join(f"    op.execute({s!r})" for s in statements) or "    pass"
        down_body = "\n".join(f"    op.execute({s!r})" for s in undo) or "    pass"
        path = self.versions / f"{revision}.py"
        path.write_text(REVISION.format(revision=revision, down=down, body=body, down_body=down_body))
        return path

    def add_widgets(self) -> AlembicProject:
        """The two revisions most tests use: ``r1`` creates widgets, ``r2`` adds a column and
        a seed row."""
        self.add(
            "r1",
            None,
            "CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL)",
            undo=("DROP TABLE widgets",),
        )
        self.add(
            "r2",
            "r1",
            "ALTER TABLE widgets ADD COLUMN size int NOT NULL DEFAULT 1",
            "INSERT INTO widgets (name) VALUES ('seed')",
            undo=("DELETE FROM widgets WHERE name = 'seed'", "ALTER TABLE widgets DROP COLUMN size"),
        )
        return self

    @property
    def runs(self) -> int:
        log = self.root / "alembic_runs.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


def copy_example(target: Path) -> None:
    """The example application, as a user's project folder."""
    for entry in EXAMPLE.iterdir():
        if entry.name in ("__pycache__", ".pytest_cache"):
            continue
        destination = target / entry.name
        if entry.is_dir():
            shutil.copytree(entry, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(entry, destination)


# -- inner pytest runs and the command line -----------------------------------------------------


def run_inner(pytester: pytest.Pytester, url: str | None, *args: str, **env: str) -> pytest.RunResult:
    """Run an inner suite in a subprocess, the way a user's CI runs pytest."""
    argv = ["-p", "no:cacheprovider", *args]
    if url is not None:
        argv += ["--dbbranch-url", url]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return pytester.runpytest_subprocess(*argv, timeout=300)


def write_tests(pytester: pytest.Pytester, name: str, body: str) -> Path:
    return pytester.makepyfile(**{name: textwrap.dedent(body)})


def assert_clean_failure(
    result: pytest.RunResult, *patterns: str, errors: int | None = None, secret: str | None = None
) -> None:
    """The run failed with one clear message (the ``patterns``), not a traceback through psycopg
    or Alembic internals, and without the secret."""
    assert result.ret != 0
    if errors is not None:
        result.assert_outcomes(errors=errors)
    result.stdout.fnmatch_lines(list(patterns))
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    if secret:
        assert secret not in output


def summary_counts(result: pytest.RunResult) -> tuple[int, int, int]:
    """Branches created, dropped and kept, from the run's ``dbbranch`` summary; created must
    equal dropped plus kept (the warm pool forks a few ahead, and drops them too)."""
    match = re.search(r"branches: (\d+) created, (\d+) dropped, (\d+) kept", result.stdout.str())
    assert match, result.stdout.str()
    created, dropped, kept = map(int, match.groups())
    assert created == dropped + kept
    return created, dropped, kept


def item_outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Outcome of every item of an inner run made with ``-rA``, by the end of its node id."""
    found: dict[str, str] = {}
    for line in result.stdout.lines:
        match = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``dbbranch`` command line in a subprocess, as a shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbbranch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def cli_json(*args: str, cwd: Path | None = None) -> Any:
    result = run_cli(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- processes, private mounts and embedded server folders ----------------------------------------


def process_state(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``T``, ``Z``...), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def process_alive(pid: int) -> bool:
    """Running (or stopped): not gone and not a zombie nobody reaped yet."""
    return process_state(pid) not in (None, "Z")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, read from ``/proc`` (no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def postmasters_in(folder: Path) -> list[int]:
    """Live postmasters of the embedded clusters under ``folder`` (``<folder>/pg*/data``)."""
    pids = []
    for pidfile in Path(folder).glob("pg*/data/postmaster.pid"):
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if process_alive(pid):
            pids.append(pid)
    return pids


def remove_embedded_folder(folder: Path, timeout: float = 30.0) -> None:
    """Stop whatever embedded server still runs in ``folder`` (immediate shutdown, as
    ``pg_ctl stop -m immediate`` does it), then delete the folder."""
    import signal
    import time

    pids = postmasters_in(folder)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)  # a test may have frozen it
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(folder, ignore_errors=True)


def private_mounts_or_skip() -> None:
    """Tests that mount (a tmpfs, a bind mount over libpq) do it in a private mount namespace
    of a child process: that needs ``unshare`` and root. Skip, saying why, where either is
    missing."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux) for a private mount namespace")
    if os.geteuid() != 0:
        pytest.skip("needs root to mount inside a private mount namespace")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")


def in_private_mounts(
    setup: str, argv: list[str], *, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a private mount namespace after the shell commands ``setup`` (mounts
    that nobody else sees, and that vanish with the namespace's last process). ``kwargs`` go
    to ``subprocess.Popen`` (cwd, env). On timeout the whole process group is killed."""
    import signal

    script = f'set -e\n{setup}\nset +e\n"$@"\n'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not end within {timeout}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# -- the README's code blocks and projects as `alembic init` writes them ---------------------------

#: A README code block a test runs: ``<!-- readme-example: NAME -->`` right above its fence.
README_BLOCK = re.compile(r"<!-- readme-example: (\S+) -->\n```(\w*)\n(.*?)```", re.DOTALL)


def readme_blocks() -> dict[str, str]:
    """The marked code blocks of README.md, by name, exactly as a reader copies them."""
    return {name: body for name, _language, body in README_BLOCK.findall((REPO / "README.md").read_text())}


def readme_block(name: str) -> str:
    blocks = readme_blocks()
    assert name in blocks, f"README.md has no block marked 'readme-example: {name}'"
    return blocks[name]


class InitializedProject(AlembicProject):
    """A project as ``alembic init -t TEMPLATE`` writes it: the stock ``env.py`` (with its
    ``fileConfig``) and ``alembic.ini`` (with its logging sections), ``sqlalchemy.url`` set to
    ``url``. Users start from these files, so the recipes are tried on them, not on ours.

    (Alembic is imported at the top of this module, before any test: a test using ``pytester``
    drops the modules first imported during it, and a second import of Alembic and SQLAlchemy
    beside the first breaks both.)"""

    def __init__(
        self, root: Path, template: str = "generic", url: str = "postgresql+psycopg://nobody@nowhere/none"
    ) -> None:
        import contextlib
        import io

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ini = root / "alembic.ini"
        self.versions = root / "migrations" / "versions"
        self.env_py = root / "migrations" / "env.py"
        with contextlib.redirect_stdout(io.StringIO()):  # "Creating directory ..."
            alembic_command.init(AlembicConfig(str(self.ini)), str(root / "migrations"), template=template)
        text = self.ini.read_text()
        assert "driver://user:pass@localhost/dbname" in text
        self.ini.write_text(text.replace("driver://user:pass@localhost/dbname", url))
        self.versions.mkdir(exist_ok=True)

    def replace_online(self, code: str) -> None:
        """Put ``code`` (a whole ``def run_migrations_online``) in place of the stock one."""
        env = self.env_py.read_text()
        start = env.index("def run_migrations_online")
        end = env.index("\n\nif context.is_offline_mode():")
        self.env_py.write_text(env[:start] + code.rstrip() + "\n" + env[end:])

    def after_config(self, code: str) -> None:
        """Insert ``code`` right after ``config = context.config``, where env.py edits go."""
        env = self.env_py.read_text()
        anchor = "config = context.config\n"
        assert anchor in env
        self.env_py.write_text(env.replace(anchor, anchor + "\n" + code.rstrip() + "\n", 1))


#: ``run_migrations_online`` as pytest-alembic's set-up guide has users write it: whatever it
#: is handed, it calls ``.connect()`` on it (an Engine, in pytest-alembic's own runs).
PYTEST_ALEMBIC_ONLINE = """
def run_migrations_online():
    connectable = context.config.attributes.get("connection", None)

    if connectable is None:
        connectable = engine_from_config(
            context.config.get_section(context.config.config_ini_section),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )

    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)

        with context.begin_transaction():
            context.run_migrations()
"""
