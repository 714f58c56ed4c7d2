"""``dbbranch doctor`` for Lakebase: checks, on the user's own workspace, each assumption the
plugin makes about the service, and prints what it found.

Why: nobody working on the plugin had a live workspace, so the fidelity review lists the
service's behaviour it could only infer (the implicit ``primary`` endpoint, who owns
``databricks_postgres``, TTLs on branches with children, the shape of a refused create). The
first user with a workspace runs this once; the table answers those questions, with timings.

Everything it creates (two branches, two or three databases inside them) is removed at the
end, branches with ``purge``; the last row says whether that worked. Where the service
refuses a child of a branch that expires, the first branch's expiry is removed to fork the
second (the plugin's template/run pattern): it has no expiry until the clean-up. Exit
status: 1 if any check the plugin depends on failed; rows marked ``info`` only report what
the service does.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
from psycopg import sql

from ..conninfo import redact_text
from ..errors import DbBranchError
from .lakebase_api import LakebaseApi
from .lakebase_errors import classify
from .lakebase_records import EndpointInfo

PASS, FAIL, INFO = "pass", "FAIL", "info"
DATABASE = "databricks_postgres"


@dataclass
class Row:
    check: str
    result: str
    seconds: float
    detail: str


class _Doctor:
    def __init__(self, api: LakebaseApi, out: TextIO, port: int | None, sslmode: str) -> None:
        self.api = api
        self.out = out
        self.port = port
        self.sslmode = sslmode
        self.rows: list[Row] = []
        self.suffix = secrets.token_hex(3)
        self.parent = f"dbbdoc-{self.suffix}-p"
        self.child = f"dbbdoc-{self.suffix}-c"
        self.database = f"dbbdoc_{self.suffix}"
        self.made_branches: list[str] = []
        self.made_databases: list[str] = []
        self.token = ""
        self.user = ""
        self.endpoint: EndpointInfo | None = None

    def row(self, check: str, result: str, started: float, detail: str) -> None:
        detail = redact_text(detail, self.token or None)
        self.rows.append(Row(check, result, time.monotonic() - started, detail))

    def run(self, check: str, step: Callable[[], tuple[str, str]], *, required: bool = True) -> bool:
        """One check: ``step`` returns (result, detail); an exception is the check's answer."""
        started = time.monotonic()
        try:
            result, detail = step()
        except Exception as exc:  # a diagnostic: every failure is an answer to report
            message = " ".join(str(exc).split())
            self.row(check, FAIL if required else INFO, started, f"{type(exc).__name__}: {message}")
            return False
        self.row(check, result, started, detail)
        return result != FAIL

    # -- PostgreSQL ----------------------------------------------------------------------------

    def connect(self, dbname: str = DATABASE) -> psycopg.Connection[Any]:
        assert self.endpoint is not None
        return psycopg.connect(
            host=self.endpoint.host,
            port=self.port or self.endpoint.port or 5432,
            user=self.user,
            password=self.token,
            dbname=dbname,
            sslmode=self.sslmode,
            connect_timeout=30,
            autocommit=True,
        )

    def sql_attempt(self, conn: psycopg.Connection[Any], statement: sql.Composed) -> str | None:
        """None if it ran, else 'SQLSTATE: message' (the answer is what we came for)."""
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            state = exc.sqlstate or "?"
            return f"{state}: {' '.join(str(exc).split())}"
        return None


def run_doctor(
    api: LakebaseApi,
    *,
    source_branch: str,
    out: TextIO,
    schema_sql: str | None = None,
    port: int | None = None,
    sslmode: str = "require",
) -> int:
    """Run every check against ``api``'s project, branching from ``source_branch``; print the
    table to ``out``; return 0 if every required check passed, else 1. ``schema_sql`` (the
    user's schema, e.g. a ``pg_dump --schema-only``) is loaded into a database inside the
    branch to time a ``CREATE DATABASE ... TEMPLATE`` copy of it. ``port``: only for
    emulators that serve every endpoint on one port."""
    doctor = _Doctor(api, out, port, sslmode)
    try:
        _checks(doctor, api.branch_name(source_branch), schema_sql)
    finally:
        _clean_up(doctor)
    _print(doctor)
    return 1 if any(row.result == FAIL for row in doctor.rows) else 0


def _checks(doctor: _Doctor, source: str, schema_sql: str | None) -> None:
    api = doctor.api

    def project() -> tuple[str, str]:
        info = api.project_info()
        return PASS, f"{info.name}, default branch {info.default_branch}, PostgreSQL {info.pg_version}"

    if not doctor.run("project readable", project):
        return

    def create_parent() -> tuple[str, str]:
        doctor.made_branches.append(doctor.parent)
        branch = api.create_branch(doctor.parent, source=source, ttl=3600, adopt=False)
        return PASS, f"{branch.name} from {source}, TTL 1 h, state {branch.state}"

    if not doctor.run("create a branch (TTL 1 h)", create_parent):
        return
    doctor.run("implicit 'primary' endpoint", lambda: _implicit_endpoint(doctor), required=False)

    def endpoint() -> tuple[str, str]:
        doctor.endpoint = api.endpoint(doctor.parent)
        port = doctor.endpoint.port
        return PASS, f"host {doctor.endpoint.host}, port {port or '5432 (default)'}"

    if not doctor.run("endpoint usable (host, port)", endpoint):
        return

    def credential() -> tuple[str, str]:
        assert doctor.endpoint is not None
        doctor.user = api.client.current_user.me().user_name or ""
        issued = api.credential(doctor.endpoint.name)
        doctor.token = issued.token
        left = issued.expires_at - time.time()
        return PASS, f"token for {doctor.user or '?'}, expires in {left / 60:.0f} min"

    if not doctor.run("database credential", credential):
        return
    if not doctor.run(f"login, sslmode={doctor.sslmode}", lambda: _login(doctor)):
        return
    if doctor.run("CREATE DATABASE in the branch", lambda: _create_database(doctor)):
        doctor.run("COMMENT ON the owned database", lambda: _comment_owned(doctor))
        if schema_sql:
            doctor.run("schema load + TEMPLATE copy", lambda: _template_copy(doctor, schema_sql))
        doctor.run(f"CREATE DATABASE ... TEMPLATE {DATABASE}", lambda: _copy_default(doctor), required=False)
    doctor.run(f"COMMENT ON DATABASE {DATABASE}", lambda: _comment_default(doctor), required=False)

    _ttl_rules(doctor)
    doctor.run(
        "refused create: duplicate id", lambda: _refused(doctor, doctor.parent, source), required=False
    )
    doctor.run("refused create: invalid id", lambda: _refused(doctor, "Invalid_ID", source), required=False)


def _ttl_rules(doctor: _Doctor) -> None:
    """What the service allows around expiries and children (the plugin forks its run
    branches, with a TTL, from template branches without one), then whether update_branch
    moves an expiry later, as the run's heartbeat does."""
    api = doctor.api
    outcome: dict[str, str] = {}

    def make_child() -> None:
        doctor.made_branches.append(doctor.child)
        api.create_branch(doctor.child, source=doctor.parent, ttl=3600, adopt=False)

    def child_of_ttl() -> tuple[str, str]:
        try:
            make_child()
        except DbBranchError as exc:
            if api.get_branch(doctor.child) is not None:
                raise
            doctor.made_branches.remove(doctor.child)
            outcome["ttl-child"] = "refused"
            return INFO, f"refused: {_reason(exc)}; the plugin's template branches have no expiry"
        outcome["ttl-child"] = "allowed"
        return INFO, f"allowed: {doctor.child} is a child of {doctor.parent}, which expires"

    doctor.run("child of a branch with a TTL", child_of_ttl, required=False)

    def child_of_no_expiry() -> tuple[str, str]:
        if outcome.get("ttl-child") == "allowed":
            return INFO, "not tried: the child of a branch with a TTL was allowed"
        _remove_expiry(doctor, doctor.parent)
        make_child()
        outcome["no-expiry-child"] = "made"
        return PASS, f"{doctor.child} (TTL 1 h) from {doctor.parent} once its expiry was removed"

    doctor.run("child of a branch without expiry", child_of_no_expiry)
    has_child = doctor.child in doctor.made_branches

    def expiry_of_parent() -> tuple[str, str]:
        if not has_child:
            return INFO, "not tried: no child was made"
        what = "extend its expiry" if outcome.get("ttl-child") == "allowed" else "add an expiry to it"
        try:
            branch = api.extend(doctor.parent, 7200)
        except DbBranchError as exc:
            return INFO, f"refused to {what}: {_reason(exc)}"
        expiry = branch.expire_time if branch else None
        return INFO, f"allowed to {what}; it expires in {_minutes(expiry)}"

    doctor.run("expiry on a branch with children", expiry_of_parent, required=False)

    def extend() -> tuple[str, str]:
        # A branch with no children, so no rule about children gets in the way.
        target = doctor.child if has_child else doctor.parent
        before = api.get_branch(target)
        earlier = before.expire_time if before else None
        # Later than the current expiry, whatever it is: the heartbeat only moves it later.
        ttl = max(5400.0, (earlier - time.time()) + 1800) if earlier is not None else 5400.0
        wanted = time.time() + ttl
        branch = api.extend(target, ttl)
        after = branch.expire_time if branch else None
        if after is None or (earlier is not None and after <= earlier):
            return FAIL, f"expiry did not move later: {_minutes(earlier)} -> {_minutes(after)}"
        if abs(after - wanted) > 120:
            return FAIL, f"asked for an expiry in {_minutes(wanted)}, got {_minutes(after)}"
        return PASS, f"{target}: expires in {_minutes(earlier)} -> {_minutes(after)}"

    doctor.run("update_branch extends the TTL", extend)


def _reason(exc: BaseException) -> str:
    """The service's words inside one of our errors: '[400 CODE] message'."""
    text = " ".join(str(exc).split())
    start = text.find("([")
    return text[start + 1 : text.rfind(")")] if start >= 0 else text


def _remove_expiry(doctor: _Doctor, branch_id: str) -> None:
    """``spec.no_expiry`` through update_branch, waited for (``LakebaseApi`` only ever sets
    an expiry)."""
    from databricks.sdk.common.types.fieldmask import FieldMask
    from databricks.sdk.service.postgres import Branch, BranchSpec

    api = doctor.api
    name = api.branch_name(branch_id)
    body = Branch(name=name, spec=BranchSpec(no_expiry=True))
    mask = FieldMask(["spec.expiration"])  # type: ignore[no-untyped-call]
    operation = api.client.postgres.update_branch(name=name, branch=body, update_mask=mask)
    _wait_operation(doctor, operation.name(), f"remove the expiry of {name}")


def _wait_operation(doctor: _Doctor, name: str, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = doctor.api.client.postgres.get_operation(name)
        if current.done:
            if current.error is not None:
                code = getattr(current.error.error_code, "value", current.error.error_code)
                raise DbBranchError(f"cannot {what}: [{code}] {current.error.message}")
            return
        time.sleep(0.2)
    raise DbBranchError(f"cannot {what}: operation {name} not done after 120s")


def _implicit_endpoint(doctor: _Doctor) -> tuple[str, str]:
    """Read directly, without ``endpoint()``'s fallback: does the service make one?"""
    name = f"{doctor.api.branch_name(doctor.parent)}/endpoints/primary"
    try:
        found = doctor.api.client.postgres.get_endpoint(name)
    except Exception as exc:
        failure = classify(exc, idempotent=True)
        return INFO, f"no: {failure.describe()} (the plugin creates one)"
    status = found.status
    host = status.hosts.host if status and status.hosts else None
    state = getattr(status.current_state, "value", None) if status else None
    return INFO, f"yes, state {state}, host {'set at once' if host else 'not set yet'}"


def _login(doctor: _Doctor) -> tuple[str, str]:
    with doctor.connect() as conn:
        row = conn.execute(
            "SELECT current_user, r.rolsuper, r.rolcreatedb, pg_get_userbyid(d.datdba), "
            "current_setting('server_version') "
            "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
        ssl = conn.pgconn.ssl_in_use
    if row is None:
        return FAIL, "no answer to a catalog query"
    user, superuser, createdb, owner, version = row
    owns = "owns" if owner == user else f"does not own (owner: {owner})"
    return PASS, (
        f"current_user {user}; superuser {superuser}; CREATEDB {createdb}; {owns} {DATABASE}; "
        f"server {version}; TLS {ssl}"
    )


def _create_database(doctor: _Doctor) -> tuple[str, str]:
    with doctor.connect() as conn:
        started = time.monotonic()
        failed = doctor.sql_attempt(
            conn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(doctor.database))
        )
        if failed:
            return FAIL, f"refused ({failed}); the plugin's per-run design needs CREATEDB"
        doctor.made_databases.append(doctor.database)
        took = time.monotonic() - started
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (doctor.database,)
        ).fetchone()
    return PASS, f"{doctor.database} in {took:.2f}s, owned by {row[0] if row else '?'}"


def _comment_owned(doctor: _Doctor) -> tuple[str, str]:
    with doctor.connect() as conn:
        statement = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(doctor.database), sql.Literal('{"tool": "pytest-dbbranch doctor"}')
        )
        failed = doctor.sql_attempt(conn, statement)
    return (FAIL, f"refused ({failed})") if failed else (PASS, "the plugin can tag databases it creates")


def _comment_default(doctor: _Doctor) -> tuple[str, str]:
    with doctor.connect() as conn:
        failed = doctor.sql_attempt(
            conn, sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(DATABASE))
        )
    if failed:
        return INFO, f"not permitted ({failed}): tags must live in databases the plugin creates"
    return INFO, "permitted"


def _copy_default(doctor: _Doctor) -> tuple[str, str]:
    copy = f"{doctor.database}_tpl"
    # From another database: a session on the template would block the copy (55006).
    with doctor.connect(doctor.database) as conn:
        started = time.monotonic()
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(copy), sql.Identifier(DATABASE)
        )
        failed = doctor.sql_attempt(conn, statement)
    if failed:
        return INFO, f"not permitted ({failed}): clone mode must copy a database the plugin owns"
    doctor.made_databases.append(copy)
    return INFO, f"permitted, {time.monotonic() - started:.2f}s"


def _template_copy(doctor: _Doctor, schema_sql: str) -> tuple[str, str]:
    copy = f"{doctor.database}_copy"
    started = time.monotonic()
    with doctor.connect(doctor.database) as conn:
        conn.execute(schema_sql.encode())  # the user's own schema file, as written
    loaded = time.monotonic() - started
    with doctor.connect() as conn:
        started = time.monotonic()
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(copy), sql.Identifier(doctor.database)
        )
        failed = doctor.sql_attempt(conn, statement)
        if failed:
            return FAIL, f"schema loaded in {loaded:.2f}s; copy refused ({failed})"
        doctor.made_databases.append(copy)
        copied = time.monotonic() - started
        strategy = conn.execute("SELECT current_setting('fsync')").fetchone()
    return (
        PASS,
        f"schema loaded in {loaded:.2f}s; copied in {copied:.2f}s (fsync {strategy[0] if strategy else '?'})",
    )


def _refused(doctor: _Doctor, branch_id: str, source: str) -> tuple[str, str]:
    """The raw shape of a refusal (status, code, SDK class), which decides what is retried."""
    from databricks.sdk.service.postgres import Branch, BranchSpec
    from google.protobuf.duration_pb2 import Duration

    api = doctor.api
    spec = BranchSpec(source_branch=source, ttl=Duration(seconds=600))
    try:
        operation = api.client.postgres.create_branch(
            parent=api.project, branch=Branch(spec=spec), branch_id=branch_id
        )
    except Exception as exc:
        failure = classify(exc, idempotent=False)
        return INFO, f"{type(exc).__name__} {failure.describe()} -> {failure.kind.value}"
    # Accepted: the refusal, if any, comes through the operation.
    doctor.made_branches.append(branch_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = api.client.postgres.get_operation(operation.name())
        if current.done:
            if current.error is not None:
                code = getattr(current.error.error_code, "value", current.error.error_code)
                return INFO, f"accepted, then the operation failed: [{code}] {current.error.message}"
            return INFO, "accepted and created (no refusal)"
        time.sleep(0.5)
    return INFO, "accepted; operation still running after 60s"


def _clean_up(doctor: _Doctor) -> None:
    started = time.monotonic()
    problems: list[str] = []
    if doctor.endpoint is not None and doctor.made_databases:
        try:
            with doctor.connect() as conn:
                for name in reversed(doctor.made_databases):
                    failed = doctor.sql_attempt(
                        conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
                    if failed:
                        problems.append(f"database {name}: {failed}")
        except psycopg.Error as exc:
            problems.append(f"databases: {exc}")
    # Children first: a branch with children cannot be deleted.
    for branch_id in reversed(doctor.made_branches):
        try:
            doctor.api.delete_branch(branch_id, wait=True)
        except DbBranchError as exc:
            problems.append(f"branch {branch_id}: {exc}")
    with contextlib.suppress(DbBranchError):
        left = [b.id for b in doctor.api.list_branches() if b.id.startswith(f"dbbdoc-{doctor.suffix}")]
        problems += [f"branch {name} still listed" for name in left]
    made = ", ".join(doctor.made_branches) or "nothing"
    if problems:
        doctor.row("clean-up (purge)", FAIL, started, "; ".join(problems))
    else:
        doctor.row("clean-up (purge)", PASS, started, f"deleted {made}")


def _minutes(stamp: float | None) -> str:
    return "never" if stamp is None else f"{(stamp - time.time()) / 60:.0f} min"


def _print(doctor: _Doctor) -> None:
    width = max(len(row.check) for row in doctor.rows) if doctor.rows else 10
    out = doctor.out
    out.write(f"Lakebase doctor: project {doctor.api.project}\n")
    for row in doctor.rows:
        out.write(f"  {row.check:<{width}}  {row.result:<4}  {row.seconds:6.2f}s  {row.detail}\n")
    calls = sum(doctor.api.calls.values())
    failed = sum(row.result == FAIL for row in doctor.rows)
    out.write(f"{failed} failed; {calls} API calls\n")
