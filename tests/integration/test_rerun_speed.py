"""What makes a rerun cheap, and what keeps it correct: the migrations' summary is
remembered between runs (no Alembic import when nothing changed) and forgotten as soon as a
migration file changes; used branches are dropped behind the tests, and all of them are gone
when the session ends, or after a kill -9, at the next run's start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pytest_dbbranch.branching.fingerprint import cached_summary
from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.branching.preflight import check
from pytest_dbbranch.settings import Settings
from tests.helpers import REPO, AlembicProject, our_branches


def _age(root: Path) -> None:
    """Files edited a minute ago: a file modified within the last two seconds might change
    again within the same timestamp tick, so its summary is not saved (as git does)."""
    past = time.time() - 60
    for path in root.rglob("*"):
        os.utime(path, (past, past))


def test_the_migrations_summary_is_reused_until_a_file_changes(
    settings: Settings, alembic_project: AlembicProject
) -> None:
    _age(alembic_project.root)
    assert cached_summary(settings) is None
    with BranchManager(settings) as manager:
        first = manager.plan()
    assert first._loaded, "the first run reads the migrations"
    assert cached_summary(settings) is not None

    # A rerun: the check and the template's name come from the summary, Alembic is not asked.
    check(settings)
    with BranchManager(settings) as manager:
        again = manager.plan()
        assert (again.name, again.fingerprint) == (first.name, first.fingerprint)
        assert not again._loaded, "the migrations were loaded although nothing changed"
        with manager.branch() as branch:
            assert branch.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)

    # An edited revision: the summary is stale, and the template is a new one.
    revision = alembic_project.versions / "r2.py"
    revision.write_text(revision.read_text() + "\n# edited\n")
    assert cached_summary(settings) is None
    with BranchManager(settings) as manager:
        edited = manager.plan()
    assert edited.fingerprint != first.fingerprint

    # A new revision file (the folder's names change): stale again, and the head moves.
    _age(alembic_project.root)
    with BranchManager(settings) as manager:
        manager.plan()
    assert cached_summary(settings) is not None
    alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN colour text")
    _age(alembic_project.root)
    assert cached_summary(settings) is None
    with BranchManager(settings) as manager:
        newest = manager.plan()
        with manager.branch() as branch:
            columns = branch.connection.execute(
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'colour'"
            ).fetchone()
    assert newest.fingerprint != edited.fingerprint
    assert columns == (1,)


def test_a_file_edited_just_now_is_not_trusted_to_its_timestamp(
    settings: Settings, alembic_project: AlembicProject
) -> None:
    (alembic_project.versions / "r2.py").touch()
    with BranchManager(settings) as manager:
        manager.plan()
    assert cached_summary(settings) is None


def test_background_drops_leave_nothing_after_the_session(settings: Settings) -> None:
    assert settings.url is not None
    with BranchManager(settings, background_drops=True) as manager:
        names = []
        for index in range(12):
            branch = manager.create(node_id=f"tests/test_x.py::test_{index}")
            branch.connection.execute("CREATE TABLE mine (id int)")
            branch.connection.commit()
            names.append(branch.name)
            assert manager.release(branch) is False
        # Bounded: never more than a few used branches wait for their drop.
        assert len(set(our_branches(settings.url)) & set(names)) <= 5
    assert not set(our_branches(settings.url)) & set(names)
    assert manager.stats.branches_dropped == manager.stats.branches_created == 12


def test_a_run_killed_with_queued_drops_is_cleaned_by_the_next_run(settings: Settings) -> None:
    """kill -9 right after its tests: the branches still queued carry the dead run's tag, and
    the next run's reaper drops them."""
    assert settings.url is not None
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from pytest_dbbranch.branching.manager import BranchManager
        from pytest_dbbranch.settings import Settings
        settings = Settings(url={settings.url!r}, alembic_ini={settings.alembic_ini!r},
                            root=Path({str(settings.root)!r}), pool_size=0)
        manager = BranchManager(settings, run_id="doomed1", background_drops=True)
        made = [manager.create(node_id=f"t{{i}}") for i in range(4)]
        for branch in made:
            branch.connection.execute("SELECT 1")
            manager.release(branch)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    left = [name for name in our_branches(settings.url) if "doomed1" in name]
    assert left, "every drop finished before the kill: nothing left to show the reaper works"
    with BranchManager(settings) as next_run:
        next_run.backend()  # opening the server reaps the branches of dead runs
        # A DROP the killed process had already sent may still finish on the server, so the
        # reaper finds all of ``left`` but that one.
        assert next_run.stats.branches_reaped >= len(left) - 1
    assert not [name for name in our_branches(settings.url) if "doomed1" in name]
