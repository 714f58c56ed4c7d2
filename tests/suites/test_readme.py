"""The README's examples are real: every code block in README.md carries a
``<!-- readme-example: NAME -->`` marker, and a test runs it as printed (``CHECKED_BY`` says
which). The Python ones run here in inner pytest runs, on a project whose source is a dump,
as the quick start configures it; the others where their subject is tested."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    AlembicProject,
    InitializedProject,
    create_database,
    drop_database,
    drop_ours,
    our_branches,
    pg_dump,
    readme_block,
    readme_blocks,
    run_inner,
    write_tests,
)
from tests.suites.support import dbbranch

#: Where each README block is run (a test module that names the block), so a new block without
#: a test, or a test that stopped using its block, fails ``test_every_block_is_run_by_a_test``.
CHECKED_BY = {
    "setup-example.sh": "tests/unit/test_packaging.py",  # extras; the run: suites/test_example.py
    "setup-tests.sh": "tests/unit/test_packaging.py",  # extras; the run: CI's .ci/run
    "install.sh": "tests/unit/test_packaging.py",
    "pyproject.toml": "tests/suites/test_readme.py",
    "test_quickstart.py": "tests/suites/test_readme.py",
    "progress.txt": "tests/suites/test_prebuild.py",
    "test_clients.py": "tests/suites/test_readme.py",
    "test_async.py": "tests/suites/test_readme.py",
    "conftest.py": "tests/suites/test_readme.py",
    "test_factory.py": "tests/suites/test_readme.py",
    "pytest9.toml": "tests/unit/test_config_files.py",
    "env_online.py": "tests/integration/test_alembic_setups.py",
    "env_database_url.py": "tests/integration/test_alembic_setups.py",
    "env_async_online.py": "tests/suites/test_readme.py",
    "conftest_testcontainers.py": "tests/suites/test_recipes.py",
    "factories.py": "tests/suites/test_readme.py",
    "conftest_factories.py": "tests/suites/test_readme.py",
    "test_factories.py": "tests/suites/test_readme.py",
    "conftest_pytest_alembic.py": "tests/suites/test_recipes.py",
    "make_base_schema.py": "tests/integration/test_alembic_setups.py",
    "emulator.sh": "tests/suites/test_readme.py",
    "kept-report.txt": "tests/suites/test_kept_branch.py",
    "connect.sh": "tests/suites/test_kept_branch.py",
    "script.py": "tests/suites/test_readme.py",
    "development.sh": "tests/unit/test_packaging.py",
}

#: Next to the README's factory fixtures: what else ``branch_fixture`` promises.
FACTORY_EXTRAS = """
    def test_factory_branch_is_not_the_test_branch(legacy_db, db_branch_info):
        assert legacy_db.name != db_branch_info.name

    def test_blank_branch_has_no_tables(blank_db):
        n = blank_db.connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        assert n == 0

    def test_the_rollback_fixture_left_nothing(quick_db):
        assert quick_db.connection.execute("SELECT count(*) FROM widgets").fetchone() == (1,)
"""

#: The sync clients at each scope: all views of that scope's branch, three distinct branches.
SYNC_SCOPES = """
    import json, pathlib

    import pytest
    from sqlalchemy import text

    @pytest.mark.parametrize("scope", ["", "_module", "_session"])
    def test_sync_clients_of_a_scope_share_its_branch(request, scope):
        info = request.getfixturevalue(f"db_branch{scope}_info")
        conn = request.getfixturevalue(f"db_branch{scope}")
        engine = request.getfixturevalue(f"db_branch{scope}_engine")
        orm = request.getfixturevalue(f"db_branch{scope}_orm")
        assert conn.info.dbname == info.name
        with engine.connect() as c:
            assert c.execute(text("SELECT current_database()")).scalar() == info.name
        assert orm.execute(text("SELECT current_database()")).scalar() == info.name
        orm.rollback()
        conn.rollback()
        with pathlib.Path("scopes.jsonl").open("a") as f:
            f.write(json.dumps([scope, info.name]) + "\\n")
"""


def fences_and_markers(text: str) -> list[tuple[int, str | None]]:
    """Each fenced block's opening line, with the marker on the line above it (or None)."""
    lines = text.splitlines()
    found, inside = [], False
    for number, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if not inside:
            marker = re.fullmatch(r"<!-- readme-example: (\S+) -->", lines[number - 1]) if number else None
            found.append((number + 1, marker.group(1) if marker else None))
        inside = not inside
    assert not inside, "an unclosed code fence"
    return found


def test_every_block_is_run_by_a_test() -> None:
    """No README code block goes unmarked, every marker has a test, and that test's module
    really names the block."""
    text = (REPO / "README.md").read_text()
    fences = fences_and_markers(text)
    unmarked = [number for number, name in fences if name is None]
    assert unmarked == [], f"README.md lines {unmarked}: code blocks without a readme-example marker"
    names = [name for _, name in fences]
    assert len(names) == len(set(names)), "two README blocks with one name"
    assert set(names) == set(CHECKED_BY)
    assert set(readme_blocks()) == set(CHECKED_BY)
    for name, module in CHECKED_BY.items():
        assert f'"{name}"' in (REPO / module).read_text(), f"{module} does not use the block {name}"


def test_the_fixture_tables_list_every_fixture_at_its_scope() -> None:
    """The README's Fixtures tables name every fixture the plugin defines, each under its
    real scope (the first table by column, the second in its scope column), and no other."""
    from pytest_dbbranch.pytest_plugin import plugin

    defined = {
        name: marker.scope
        for name, value in vars(plugin).items()
        if (marker := getattr(value, "_fixture_function_marker", None)) is not None
    }
    section = (REPO / "README.md").read_text().split("## Fixtures\n", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")] if row.startswith("| `") else []
        if len(cells) == 4 and cells[1].startswith("`"):  # function | module | session | what
            for scope, cell in zip(("function", "module", "session"), cells, strict=False):
                listed.update(dict.fromkeys(re.findall(r"`(\w+)`", cell), scope))
        elif len(cells) == 3:  # fixture | scope | what
            listed.update(dict.fromkeys(re.findall(r"`(\w+)`", cells[0]), cells[1]))
    assert listed == defined


def snapshot_at_r1(url: str, target: Path) -> None:
    """A production snapshot of the widgets app at revision r1 (the table, no rows), dumped
    as the README says to dump one."""
    name = "dbbranch_tests_readme_prod"
    create_database(
        url,
        name,
        "CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL)",
        "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('r1')",
    )
    try:
        target.write_bytes(pg_dump(url, name, "--no-owner", "--no-privileges"))
    finally:
        drop_database(url, name)


def test_readme_examples_pass(
    pytester: pytest.Pytester,
    alembic_project: AlembicProject,
    embedded_url: str,
) -> None:
    """The quick start's configuration, with a dump as the source, and the Python blocks that
    need no extra (quick start, the ORM and rollback examples, the ``branch_fixture``
    conftest and its test) pass as printed. ``blank_db`` is blank although the source is a
    dump, ``quick_db`` left nothing behind, each scope's clients share its branch."""
    snapshot_at_r1(embedded_url, pytester.path / "snapshot.sql")
    (pytester.path / "pyproject.toml").write_text(readme_block("pyproject.toml"))
    for name in ("test_quickstart.py", "test_clients.py", "conftest.py", "test_factory.py"):
        (pytester.path / name).write_text(readme_block(name))
    write_tests(pytester, "test_factory_extras", FACTORY_EXTRAS)
    write_tests(pytester, "test_sync_scopes", SYNC_SCOPES)
    result = run_inner(pytester, embedded_url, "-p", "no:randomly")
    result.assert_outcomes(passed=14)
    result.stdout.fnmatch_lines(["*1 source dumps restored*"])
    scopes = [json.loads(line) for line in (pytester.path / "scopes.jsonl").read_text().splitlines()]
    assert len({name for _, name in scopes}) == 3
    assert our_branches(embedded_url) == []


def test_readme_async_and_factory_boy_recipes(pytester: pytest.Pytester, embedded_url: str) -> None:
    """The async examples under pytest-asyncio and anyio, the factory-boy recipe, on a project
    made by ``alembic init -t async`` with the README's async ``env.py`` edit; beside them the
    async clients at each scope (shared by tests that each run their own event loop) and an
    ``upgrade()`` inside an ``async def`` test, which that edit makes possible."""
    for module in ("pytest_asyncio", "anyio", "greenlet", "factory"):
        pytest.importorskip(module, reason=f"needs {module}: pip install -e '.[test]'")
    project = InitializedProject(pytester.path, template="async")
    project.replace_online(readme_block("env_async_online.py"))
    project.add_widgets()
    (pytester.path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    (pytester.path / "myapp").mkdir()
    (pytester.path / "myapp" / "__init__.py").write_text("")
    (pytester.path / "myapp" / "models.py").write_text(WIDGET_MODEL)
    (pytester.path / "factories.py").write_text(readme_block("factories.py"))
    (pytester.path / "conftest.py").write_text(readme_block("conftest_factories.py"))
    for name in ("test_factories.py", "test_async.py"):
        (pytester.path / name).write_text(readme_block(name))
    write_tests(pytester, "test_async_scopes", ASYNC_SCOPES)
    result = run_inner(pytester, embedded_url, "-p", "no:randomly")
    result.assert_outcomes(passed=10)
    assert our_branches(embedded_url) == []


WIDGET_MODEL = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "widgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    size: Mapped[int] = mapped_column(server_default="1")
"""

ASYNC_SCOPES = """
    import pytest
    from sqlalchemy import text

    SCOPES = ["", "_module", "_session"]

    async def database(request, scope):
        conn = request.getfixturevalue(f"db_branch{scope}_async")
        session = request.getfixturevalue(f"db_branch{scope}_orm_async")
        cursor = await conn.execute("SELECT current_database()")
        (name,) = await cursor.fetchone()
        await conn.rollback()
        assert (await session.execute(text("SELECT current_database()"))).scalar() == name
        await session.rollback()
        return name

    @pytest.mark.asyncio
    @pytest.mark.parametrize("scope", SCOPES)
    async def test_async_clients_in_one_loop(request, scope):
        assert await database(request, scope) == request.getfixturevalue(f"db_branch{scope}_info").name

    @pytest.mark.anyio
    @pytest.mark.parametrize("scope", SCOPES)
    async def test_async_clients_in_another_loop(request, scope):
        assert await database(request, scope) == request.getfixturevalue(f"db_branch{scope}_info").name

    @pytest.mark.asyncio
    @pytest.mark.dbbranch(revision="r1")
    async def test_upgrade_inside_an_async_test(db_branch, db_branch_info):
        db_branch.execute("INSERT INTO widgets (name) VALUES ('old')")
        db_branch.commit()
        db_branch_info.upgrade("head")
        assert db_branch.execute("SELECT size FROM widgets WHERE name = 'old'").fetchone() == (1,)
"""


def test_readme_diff_takes_json_like_every_subcommand(
    tmp_path: Path, embedded_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dbbranch diff --json`` (the README: "``--json`` gives machine-readable output") prints
    the diff as JSON, as ``--format json`` does; it once printed Markdown."""
    project = AlembicProject(tmp_path / "app").add_widgets()
    monkeypatch.chdir(project.root)
    code, out, err = dbbranch(capsys, "diff", "--json", "--url", embedded_url)
    assert code == 0, err
    changes = {(c["kind"], c["action"], c["table"]) for c in json.loads(out)["changes"]}
    assert ("table", "added", "public.widgets") in changes
    assert json.loads(out) == json.loads(
        dbbranch(capsys, "diff", "--format", "json", "--url", embedded_url)[1]
    )


def test_readme_script_example(
    alembic_project: AlembicProject, embedded_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "works without pytest" snippet, run in this process against a real server."""
    code = readme_block("script.py").replace('"postgresql://app@127.0.0.1/postgres"', repr(embedded_url))
    monkeypatch.chdir(alembic_project.root)
    drop_ours(embedded_url)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert our_branches(embedded_url) == []
    assert len(our_branches(embedded_url, "template")) == 1


def test_readme_emulator_command_is_real(embedded_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator command line the README prints reaches the emulator with those values
    (serving is replaced: the emulator itself is tested in ``tests/integration``)."""
    from pytest_dbbranch import cli
    from pytest_dbbranch.emulator import command_line

    served = []
    monkeypatch.setattr(command_line, "_serve", lambda args, backing: served.append(args))
    words = readme_block("emulator.sh").split()
    assert words[:2] == ["dbbranch", "emulator"]
    assert cli.main([*words[1:], "--backing-url", embedded_url]) == 0
    assert [(a.project, a.source_database) for a in served] == [(["demo"], "my_snapshot")]


def test_readme_performance_numbers_come_from_the_benchmark_results() -> None:
    """The Performance table shows the medians the benchmark last wrote, and its plot exists."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    for key in ("raw_floor", "db_branch_pool0", "db_branch_pool2", "rollback", "pytest_postgresql"):
        median = results["per_test"][key]["median_ms"]
        shown = f"{median:.3g}" if median >= 1 else f"{median:.2f}"
        assert shown in section, (key, shown)
    for target in results["targets"]:
        start = f"| {target['target']} |"
        row = next((line for line in section.splitlines() if line.startswith(start)), None)
        assert row is not None, target["target"]
        assert f"| {target['measured']:g} {target['unit']} |" in row, (row, target)
        assert row.rstrip().endswith("| yes |" if target["met"] else "| no |"), (row, target)
    assert (REPO / "bench" / "results.png").stat().st_size > 10_000
