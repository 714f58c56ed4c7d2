"""Migrated templates through the ``BranchManager``: built once, reused by later runs, rebuilt
when what shapes them changes, and replaced (never accumulated) in their group.

Each ``make_manager()`` is a new run; the Alembic project counts its own migrations
(``alembic_project.runs``), which is how a build is told from a reuse.
"""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from pytest_dbbranch import names
from pytest_dbbranch.backends import Tag
from pytest_dbbranch.branching.templates import TemplatePlan
from pytest_dbbranch.errors import MigrationError
from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, our_branches
from tests.integration.support import MakeManager


def widgets(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM widgets").fetchone()
    assert row is not None
    return int(row[0])


def test_template_reused_across_runs_and_rebuilt_on_change(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """A later run reuses the sealed template (no migration); a changed migration file changes
    the fingerprint, so the next run builds a new template and drops the one it replaces."""
    url = str(settings.url)
    first = make_manager()
    template = first.template()
    assert (first.stats.template_builds, first.stats.template_hits, alembic_project.runs) == (1, 0, 1)
    assert our_branches(url, "template") == [template]

    second = make_manager()
    assert second.template() == template
    assert (second.stats.template_builds, second.stats.template_hits, alembic_project.runs) == (0, 1, 1)

    alembic_project.add("r3", "r2", "ALTER TABLE widgets ADD COLUMN colour text")
    third = make_manager()
    replacement = third.template()
    assert replacement != template
    assert alembic_project.runs == 2
    # The first two runs are still alive and may fork the old template: it stays.
    assert sorted(our_branches(url, "template")) == sorted([template, replacement])
    first.close()
    second.close()
    # The next run to find the template sees the old one unused, and drops it.
    assert make_manager().template() == replacement
    assert our_branches(url, "template") == [replacement]
    with third.branch() as branch, branch.connect() as conn:
        conn.execute("SELECT colour FROM widgets")


def test_rebuild_rebuilds_once_per_run(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """``--dbbranch-rebuild`` builds again although the fingerprint holds, once per run: a
    second worker of the same run reuses what the first rebuilt; the next run rebuilds."""
    template = make_manager().template()
    assert alembic_project.runs == 1
    run = names.new_run_id()
    gw0 = make_manager(run_id=run, worker_id="gw0", rebuild=True)
    assert gw0.template() == template
    assert gw0.stats.template_builds == 1 and alembic_project.runs == 2
    gw1 = make_manager(run_id=run, worker_id="gw1", rebuild=True)
    assert gw1.template() == template
    assert gw1.stats.template_hits == 1 and alembic_project.runs == 2
    assert make_manager(rebuild=True).template() == template
    assert alembic_project.runs == 3
    assert our_branches(str(settings.url), "template") == [template]


def test_half_built_template_after_crash_is_rebuilt(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """A run killed while migrating leaves an unsealed template of a dead process; the next
    run does not use it but builds the template again, and its branches are complete."""
    manager = make_manager()
    backend = manager.backend()
    plan = TemplatePlan(settings, backend)
    killed = subprocess.Popen(["true"])
    killed.wait()
    tag = Tag(
        kind="template",
        run="crashed",
        parent="template0",
        fingerprint=plan.fingerprint,
        group=plan.group,
        pid=killed.pid,
    )
    backend.fork(plan.name, "template0", tag)  # the migration never finished: no seal
    assert manager.template() == plan.name
    assert manager.stats.template_builds == 1 and alembic_project.runs == 1
    record = backend.describe(plan.name)
    assert record is not None and record.ready and record.tag.run == manager.run_id
    with manager.branch() as branch:
        assert widgets(branch.conninfo) == 1


def test_stale_templates_of_the_group_are_dropped_other_groups_kept(
    make_manager: MakeManager,
    alembic_project: AlembicProject,
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A new build replaces the older templates of its group (the same migration history,
    source and target) once no live run uses them: another project's template (another
    history) and another target's stay."""
    url = str(settings.url)
    other = AlembicProject(tmp_path_factory.mktemp("other") / "project")
    other.add("o1", None, "CREATE TABLE others (id int)")
    builders = [
        make_manager(alembic_ini=str(other.ini), root=other.root),
        make_manager(),
        make_manager(revision="r1"),
    ]
    other_template, old, older_target = (manager.template() for manager in builders)
    assert len({other_template, old, older_target}) == 3
    for manager in builders:
        manager.close()

    alembic_project.add("r3", "r2", "CREATE TABLE gadgets (id int)")
    new = make_manager().template()
    assert sorted(our_branches(url, "template")) == sorted([other_template, older_target, new])


def test_failed_build_is_not_retried_by_the_same_run(
    make_manager: MakeManager, alembic_project: AlembicProject, settings: Settings
) -> None:
    """Every test of a run asks for the template: a failed build fails them all with the same
    error, without migrating again, and leaves no template behind."""
    alembic_project.add("r3", "r2", "UPDATE widgets SET nme = 'x'")
    manager = make_manager()
    with pytest.raises(MigrationError) as first:
        manager.create(node_id="t::test_a")
    with pytest.raises(MigrationError) as second:
        manager.create(node_id="t::test_b")
    assert second.value is first.value
    assert alembic_project.runs == 1
    assert our_branches(str(settings.url), "template") == []
    assert our_branches(str(settings.url)) == []


def test_unedited_env_py_migrates_the_branch(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """An env.py that ignores ``config.attributes["connection"]`` builds its own engine from
    ``sqlalchemy.url``, which points at the branch being built, not at the ini's URL."""
    env = alembic_project.root / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace('connectable = config.attributes.get("connection")', "connectable = None")
    )
    manager = make_manager()
    with manager.branch() as branch:
        assert widgets(branch.conninfo) == 1
    assert alembic_project.runs == 1
