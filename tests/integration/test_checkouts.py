"""The same content builds once, wherever it is checked out; different content never shares
a template.

A template's fingerprint is content only: script files relative to the script folder, the
``[alembic]`` values as written (``%(here)s`` unexpanded, ``sqlalchemy.url`` left out: the
plugin replaces it), the files ``dbbranch_fingerprint_files`` names, role, source, target and
server version. Three CI runners, or three worktrees of one developer, share one build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbbranch.branching.manager import BranchManager
from pytest_dbbranch.errors import ConfigError
from pytest_dbbranch.settings import Settings
from tests.helpers import AlembicProject, our_branches
from tests.integration.support import MakeManager

#: A revision whose data comes from a module outside the script folder.
IMPORTS_SHARED = """
import importlib.util
from pathlib import Path

from alembic import op

revision = "r3"
down_revision = "r2"
branch_labels = None
depends_on = None


def shared():
    path = Path(__file__).resolve().parents[2] / "app" / "defaults.py"
    spec = importlib.util.spec_from_file_location("app_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade():
    op.execute(f"INSERT INTO widgets (name) VALUES ('{shared().DEFAULT_NAME}')")


def downgrade():
    pass
"""


def for_project(make_manager: MakeManager, project: AlembicProject, **overrides: object) -> BranchManager:
    return make_manager(alembic_ini=str(project.ini), root=project.root, **overrides)


def names_in_branch(manager: BranchManager) -> list[str]:
    with manager.branch() as branch:
        rows = branch.connection.execute("SELECT name FROM widgets ORDER BY id").fetchall()
    return [name for (name,) in rows]


def test_three_checkouts_build_once(make_manager: MakeManager, settings: Settings, tmp_path: Path) -> None:
    """Three copies of one project in three folders: one template, one migration run in all;
    the others find it sealed and use it."""
    copies = [
        AlembicProject(tmp_path / folder / "project").add_widgets() for folder in ("ci-1", "ci-2", "wt")
    ]
    managers = [for_project(make_manager, copy) for copy in copies]
    templates = {manager.template() for manager in managers}
    assert len(templates) == 1
    assert [manager.stats.template_builds for manager in managers] == [1, 0, 0]
    assert sum(copy.runs for copy in copies) == 1
    assert our_branches(str(settings.url), "template") == sorted(templates)
    assert names_in_branch(managers[2]) == ["seed"]


def test_the_server_url_in_alembic_ini_is_not_content(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """Every developer's ``sqlalchemy.url`` differs and the plugin replaces it anyway: editing
    it does not rebuild. Any other ``[alembic]`` value does."""
    template = make_manager().template()
    ini = alembic_project.ini.read_text()
    alembic_project.ini.write_text(
        ini.replace("postgresql+psycopg://nowhere/none", "postgresql://me@laptop/dev")
    )
    again = make_manager()
    assert (again.template(), again.stats.template_builds) == (template, 0)
    alembic_project.ini.write_text(alembic_project.ini.read_text() + "version_table = alembic_version_v2\n")
    assert make_manager().template() != template


def test_fingerprint_files_outside_the_script_folder(
    make_manager: MakeManager, alembic_project: AlembicProject
) -> None:
    """A migration reads ``app/defaults.py``: named in ``dbbranch_fingerprint_files``, an edit
    of it gives a new template with the new data; a glob that matches nothing is an error
    naming the setting, not a silently weaker fingerprint."""
    (alembic_project.root / "app").mkdir()
    defaults = alembic_project.root / "app" / "defaults.py"
    defaults.write_text("DEFAULT_NAME = 'first'\n")
    (alembic_project.versions / "r3.py").write_text(IMPORTS_SHARED)
    first = make_manager(fingerprint_files="app/*.py")
    assert names_in_branch(first) == ["seed", "first"]

    defaults.write_text("DEFAULT_NAME = 'second'\n")
    second = make_manager(fingerprint_files="app/*.py")
    assert second.template() != first.template()
    assert names_in_branch(second) == ["seed", "second"]

    with pytest.raises(ConfigError) as missing:
        make_manager(fingerprint_files="app/*.py,config/*.yaml").template()
    message = str(missing.value)
    assert "dbbranch_fingerprint_files" in message and "'config/*.yaml' matches no file" in message
