"""The plugin on Lakebase, in process: ``BranchManager`` objects talk to the emulator through
the real databricks-sdk client, as a CI identity that does not own the project (its role has
the documented rights: CREATEDB, no superuser, no ownership of ``databricks_postgres``), and
log in through the emulator's endpoints with generated credentials over TLS.

A run is one Lakebase branch forked from a template branch; tests get databases inside it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.branching import lakebase_gc
from pytest_dbbranch.branching.lakebase_gc import collect_lakebase, find_lakebase_garbage
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.emulator import LakebaseEmulator
from pytest_dbbranch.settings import Settings, resolve
from tests.helpers import AlembicProject
from tests.integration.support import MakeManager, wait_for

PROJECT = "demo"
CI = "ci-bot@example.com"


@pytest.fixture
def ci_env(emulator: LakebaseEmulator, lakebase_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The run authenticates as a CI identity that is not the project's owner."""
    token = emulator.add_identity(CI)
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    return token


@pytest.fixture
def lakebase(ci_env: str, alembic_project: AlembicProject) -> Settings:
    return resolve(env=os.environ, root=alembic_project.root)


def ours(emulator: LakebaseEmulator, kind: str) -> list[dict[str, Any]]:
    return [
        b for b in emulator.branches(PROJECT) if names.generated_kind(b["name"].rsplit("/", 1)[-1]) == kind
    ]


def api_calls(emulator: LakebaseEmulator) -> int:
    return sum(emulator.calls().values())


def test_a_run_is_one_lakebase_branch_with_a_database_per_test(
    lakebase: Settings, emulator: LakebaseEmulator, alembic_project: AlembicProject, make_manager: MakeManager
) -> None:
    """The first run copies production into a template branch, migrates once and seals; the
    run forks its own branch from it (with a TTL), and its tests' branches are databases in
    there: no API call per test. At the end the run's branch is purged, the template branch
    stays for the next run, and production is untouched. Everything ran as the CI role,
    which is no superuser and owns nothing it did not create."""
    manager = make_manager(base=lakebase)
    manager.template()
    assert alembic_project.runs == 1
    [run_branch] = ours(emulator, "run")
    [template_branch] = ours(emulator, "template-branch")
    assert run_branch["status"].get("expire_time") and not template_branch["status"].get("expire_time")
    before = api_calls(emulator)
    for i in range(3):
        with manager.branch(node_id=f"test_{i}") as branch:
            conn = branch.connection
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
            assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
            user, superuser = conn.execute(
                "SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            ).fetchone()
            assert (user, superuser) == (CI, False)
            conn.execute("DELETE FROM customers")
            conn.commit()
            assert conn.pgconn.ssl_in_use
    assert api_calls(emulator) - before <= 1  # at most a credential renewal
    manager.close()
    wait_for(lambda: ours(emulator, "run") == [])  # purged, without waiting at the run's end
    assert len(ours(emulator, "template-branch")) == 1
    client = _sdk(emulator, emulator.token)
    with _connect_as_owner(emulator, client, "production") as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
        assert conn.execute("SELECT to_regclass('widgets')").fetchone() == (None,)


def test_the_next_run_and_a_concurrent_job_reuse_the_template_branch(
    lakebase: Settings, emulator: LakebaseEmulator, alembic_project: AlembicProject, make_manager: MakeManager
) -> None:
    """Two jobs started together build one template branch (the second waits for the
    first's); a later run migrates nothing. Each job has its own run branch."""
    first, second = make_manager(base=lakebase), make_manager(base=lakebase)
    errors: list[BaseException] = []

    def start(manager: BranchManager) -> None:
        try:
            with manager.branch() as branch:
                assert branch.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(m,)) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(ours(emulator, "run")) == 2
    assert len(ours(emulator, "template-branch")) == 1
    assert alembic_project.runs == 1
    first.close()
    second.close()
    third = make_manager(base=lakebase)
    third.template()
    assert alembic_project.runs == 1
    assert len(ours(emulator, "template-branch")) == 1


def test_a_migration_change_makes_a_new_template_branch_and_gc_removes_the_old(
    lakebase: Settings,
    emulator: LakebaseEmulator,
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new revision is a new fingerprint, so a new template branch; the one it replaced
    goes at the next gc once nothing forks from it. A run's branch whose processes died
    (its run lock free) goes too, while a live run's stays."""
    monkeypatch.setattr(lakebase_gc, "MARK_GRACE", 0.0)
    first = make_manager(base=lakebase)
    first.template()
    first.close()
    wait_for(lambda: ours(emulator, "run") == [])
    alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN colour text")
    live = make_manager(base=lakebase)
    live.template()
    dead = make_manager(base=lakebase)
    dead.template()
    dead_branch = dead.lakebase().name
    # A job killed without teardown: its connections (and so its run lock) are gone, its
    # branch is not.
    dead._lakebase = None  # type: ignore[attr-defined]
    for backend in list(dead._backends.values()):  # type: ignore[attr-defined]
        backend.close()
    dead._backends.clear()  # type: ignore[attr-defined]
    assert len(ours(emulator, "template-branch")) == 2
    garbage = find_lakebase_garbage(live.lakebase())
    reasons = {g.branch: g.reason for g in garbage}
    assert dead_branch in reasons and "no process holds its run lock" in reasons[dead_branch]
    assert live.lakebase().name not in reasons
    assert any("replaced by" in r for r in reasons.values()), reasons
    assert collect_lakebase(live.lakebase(), garbage) == []
    wait_for(lambda: [b["branch_id"] for b in ours(emulator, "run")] == [live.lakebase().name])
    wait_for(lambda: len(ours(emulator, "template-branch")) == 1)
    with live.branch() as branch:
        assert branch.connection.execute("SELECT colour FROM widgets").fetchall() == [(None,)]


def test_short_lived_credentials_in_every_isolation_mode(
    lakebase: Settings,
    emulator: LakebaseEmulator,
    make_manager: MakeManager,
) -> None:
    """Tokens that expire after 1 s: connections opened long after a branch was made, a
    SQLAlchemy pool that opens new connections, rollback isolation's shared connection and
    a test's own Lakebase branch all log in, because each login asks for a fresh token."""
    emulator.behaviour = dataclasses.replace(emulator.behaviour, credential_lifetime=1.0)
    manager = make_manager(base=lakebase)
    for isolation in ("branch", "rollback", "lakebase_branch"):
        settings = lakebase.with_overrides("test", isolation=isolation)
        with manager.branch(settings, node_id=isolation) as branch:
            # Rollback isolation's engine is the test's one connection; the others pool.
            pooled = {} if isolation == "rollback" else {"pool_size": 1, "max_overflow": 0, "pool_recycle": 1}
            engine = branch.engine(**pooled)
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM widgets").scalar() == 1
            time.sleep(1.5)
            with engine.connect() as conn:  # recycled: a new login, after the token expired
                assert conn.exec_driver_sql("SELECT count(*) FROM widgets").scalar() == 1
            with branch.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert branch.connection.execute("SELECT count(*) FROM customers").fetchone() == (50,)


def test_a_tests_own_lakebase_branch(
    lakebase: Settings, emulator: LakebaseEmulator, make_manager: MakeManager
) -> None:
    """isolation lakebase_branch: a Lakebase branch of its own with the short TTL, forked
    from the template branch (no TTL on a parent), deleted at teardown."""
    manager = make_manager(base=lakebase.with_overrides("test", isolation="lakebase_branch"))
    with manager.branch() as branch:
        [own] = ours(emulator, "branch")
        assert own["status"].get("expire_time")
        parent = own["status"].get("source_branch", "").rsplit("/", 1)[-1]
        assert names.generated_kind(parent) == "template-branch"
        assert branch.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
    wait_for(lambda: ours(emulator, "branch") == [])


def test_the_heartbeat_extends_the_run_branch(
    lakebase: Settings, emulator: LakebaseEmulator, make_manager: MakeManager
) -> None:
    """A run longer than its TTL keeps its branch: the heartbeat pushes the expiry on."""
    manager = make_manager(base=lakebase, lakebase_run_ttl=6)
    manager.template()

    def expiry() -> float:
        [run] = ours(emulator, "run")
        return _seconds(run["status"]["expire_time"])

    first = expiry()
    # Beats every 1.5 s, each setting the expiry 6 s from its own time.
    wait_for(lambda: expiry() > first + 2, timeout=15, what="the heartbeat to move the expiry")


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _sdk(emulator: LakebaseEmulator, token: str) -> Any:
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=emulator.url, token=token)


def _connect_as_owner(emulator: LakebaseEmulator, client: Any, branch: str) -> psycopg.Connection[Any]:
    endpoint = client.postgres.get_endpoint(f"projects/{PROJECT}/branches/{branch}/endpoints/primary")
    credential = client.postgres.generate_database_credential(endpoint=endpoint.name)
    me = client.current_user.me().user_name
    port = int(os.environ.get("DBBRANCH_LAKEBASE_PORT", "5432"))
    return psycopg.connect(
        host=endpoint.status.hosts.host,
        port=port,
        user=me,
        password=credential.token,
        dbname="databricks_postgres",
        sslmode="require",
    )


def test_a_template_branch_older_than_the_max_age_is_not_forked(
    lakebase: Settings, emulator: LakebaseEmulator, alembic_project: AlembicProject, make_manager: MakeManager
) -> None:
    """Production moves on: a copy of it older than ``lakebase_template_max_age`` is not
    forked again; the next run copies the source anew (and migrates once more)."""
    first = make_manager(base=lakebase)
    first.template()
    first.close()
    time.sleep(1.5)
    second = make_manager(base=lakebase, lakebase_template_max_age=1)
    second.template()
    assert alembic_project.runs == 2
    assert len(ours(emulator, "template-branch")) == 2


def test_the_command_line_lists_collects_and_checks(
    lakebase: Settings,
    emulator: LakebaseEmulator,
    make_manager: MakeManager,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dbbranch list`` shows the run's and the template branch, ``dbbranch gc`` leaves a
    live run alone, ``dbbranch lakebase doctor`` passes on the emulator and cleans up."""
    import json

    from pytest_dbbranch import cli

    monkeypatch.chdir(lakebase.root)
    manager = make_manager(base=lakebase)
    manager.template()
    assert cli.main(["list", "--json"]) == 0
    kinds = sorted(row["kind"] for row in json.loads(capsys.readouterr().out))
    assert kinds == ["run", "template-branch"]
    assert cli.main(["gc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == []
    before = {b["branch_id"] for b in emulator.branches(PROJECT)}
    assert cli.main(["lakebase", "doctor"]) == 0, capsys.readouterr().out
    assert "PostgreSQL" in capsys.readouterr().out
    wait_for(lambda: {b["branch_id"] for b in emulator.branches(PROJECT)} == before)
